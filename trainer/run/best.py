"""Which checkpoint to publish: a suggestion from what the run already measured, with its reason in one
sentence. Torch-free (the studio reads it).

The evidence, per saved checkpoint (raw weights, and their EMA where it was saved and measured):
- the validation loss the trainer measured on it (fixed timesteps and noise: checkpoints compare on the
  same draw; lower fits held-out images of the concept better);
- where the trigger words are known and previews of prompts without them were drawn at the checkpoint's
  step beside base images: the prior drift, how far those previews moved from the base's picture at the
  same seed (mean absolute difference, 0–255). A checkpoint that moved them more than DRIFT_SHARE of the
  distance between two pictures of the same prompt at two seeds has started to replace the base's pictures
  rather than add a concept to them (the demo measured 27.6 at a good rate, 41.6 at an overcooked one,
  against 48.8 for a new seed). Previews have one seed per prompt, so that distance is estimated from the
  base's pictures of different prompts, scaled by SEED_TO_PROMPT_DISTANCE.

The rule: among the checkpoints within the drift bound (or all, where drift is unknown), the lowest
validation loss. Without a validation loss there is no suggestion; the studio says how to get one."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.run.events import RunView

DRIFT_SHARE = 0.7  # the demo concept test's bound: prior drift ≤ 0.7 × a new seed's distance
# a new seed's distance ÷ a different prompt's, measured on the demo base (48.8 and 106.1 of 255:
# bench/results/best_checkpoint.md); a calibration from one base, where no second seed was drawn
SEED_TO_PROMPT_DISTANCE = 48.8 / 106.1


@dataclass(frozen=True)
class Candidate:
    step: int
    adapter: str          # relative to the run folder
    loss: float           # validation loss
    ema: bool = False
    drift: float | None = None  # mean abs pixel change of prompts without the trigger; None: not measurable

    @property
    def label(self) -> str:
        return f"step {self.step}" + (" (EMA)" if self.ema else "")


@dataclass(frozen=True)
class Suggestion:
    pick: Candidate | None
    reason: str
    candidates: tuple[Candidate, ...] = ()
    drift_bound: float | None = None


def _mean_abs_diff(a: Path, b: Path) -> float | None:
    try:
        with Image.open(a) as ia, Image.open(b) as ib:
            x, y = np.asarray(ia.convert("RGB"), np.float32), np.asarray(ib.convert("RGB"), np.float32)
    except (OSError, ValueError):
        return None
    return float(np.abs(x - y).mean()) if x.shape == y.shape else None


def has_trigger(prompt: str, trigger: str) -> bool:
    """Whether a preview prompt uses the trigger words (any of its comma-separated phrases)."""
    phrases = [p.strip().lower() for p in trigger.split(",") if p.strip()]
    return any(p in prompt.lower() for p in phrases)


def prior_drift(run_dir: Path, view: RunView, trigger: str) -> tuple[dict[int, float], float | None]:
    """({step: drift of the prompts without the trigger}, the yardstick), from the run's previews."""
    if not trigger.strip():
        return {}, None
    base: dict[int, Path] = {}
    drawn: dict[tuple[int, int], Path] = {}
    prompt_of: dict[int, str] = {}
    for ev in view.samples:
        path, j = run_dir / str(ev.get("path", "")), int(ev.get("index") or 0)
        prompt_of[j] = str(ev.get("prompt", ""))
        if ev.get("kind") == "base":
            base[j] = path
        else:
            drawn[(int(ev.get("step") or 0), j)] = path
    plain = [j for j in base if not has_trigger(prompt_of[j], trigger)]
    if not plain:
        return {}, None
    pairs = [_mean_abs_diff(base[a], base[b]) for a, b in itertools.combinations(sorted(base), 2)]
    pairs = [d for d in pairs if d is not None]
    yardstick = float(np.mean(pairs)) if pairs else None
    drift: dict[int, float] = {}
    for step in sorted({s for s, _ in drawn}):
        ds = [_mean_abs_diff(drawn[(step, j)], base[j]) for j in plain if (step, j) in drawn]
        ds = [d for d in ds if d is not None]
        if ds:
            drift[step] = float(np.mean(ds))
    return drift, yardstick


def candidates(run_dir: Path, view: RunView | None = None, trigger: str = "") -> tuple[list[Candidate], float | None]:
    """Every measured checkpoint whose file is still there, and the drift bound (None: not measurable)."""
    run_dir = Path(run_dir)
    view = view or RunView(run_dir).update()
    drift, yardstick = prior_drift(run_dir, view, trigger)
    found: dict[tuple[int, bool], Candidate] = {}
    for ev in view.validations:
        step = int(ev.get("step") or 0)
        for key, loss_key, ema in (("adapter", "loss", False), ("ema_adapter", "ema_loss", True)):
            rel, loss = ev.get(key), ev.get(loss_key)
            if rel and loss is not None and (run_dir / rel).is_file():
                found[(step, ema)] = Candidate(step, rel, float(loss), ema, drift.get(step))
    bound = DRIFT_SHARE * SEED_TO_PROMPT_DISTANCE * yardstick if yardstick else None
    return sorted(found.values(), key=lambda c: (c.step, c.ema)), bound


def suggest(run_dir: Path, trigger: str = "", view: RunView | None = None) -> Suggestion:
    """The checkpoint to publish and why (pick None, with what to change, when nothing was measured)."""
    cands, bound = candidates(run_dir, view, trigger)
    if not cands:
        return Suggestion(None, "No checkpoint has a validation loss: set Validation → Hold-out share (e.g. 0.2) "
                                "or a validation folder, and save more than once, to get a suggestion.")
    within = [c for c in cands if bound is None or c.drift is None or c.drift <= bound]
    if not within:  # every checkpoint moved the base's pictures too far: the least moved, and say so
        pick = min(cands, key=lambda c: (c.drift, c.loss))
        return Suggestion(pick, f"{pick.label}: every checkpoint moved prompts without the trigger far from the "
                                f"base (least: {pick.drift:.1f} of 255, bound {bound:.1f}); this one the least. "
                                "A lower learning rate or fewer steps would keep the base's pictures.",
                          tuple(cands), bound)
    pick = min(within, key=lambda c: (c.loss, -c.step))
    last = max(cands, key=lambda c: (c.step, not c.ema))
    why = f"{pick.label}: lowest validation loss ({pick.loss:.4f}"
    why += f", final {last.loss:.4f})" if last != pick else ", and it is the final one)"
    if pick.drift is not None and bound is not None:
        why += f"; prompts without the trigger stay near the base ({pick.drift:.1f} of 255, bound {bound:.1f})"
    skipped = [c for c in cands if c not in within and c.loss < pick.loss]
    if skipped:
        why += f"; {len(skipped)} checkpoint(s) with a lower loss moved them too far"
    return Suggestion(pick, why + ".", tuple(cands), bound)
