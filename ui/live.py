"""What the Train tab's live panel shows of a run: progress line, what the trainer is doing, the loss
curve and the newest previews, all drawn from the run's shared RunView (trainer.run.events), which reads
only the events appended since the last look."""
from __future__ import annotations

import html
from pathlib import Path

from trainer.run.events import RunView

from ui.paths import UnsafePath, inside

PHASE_TEXT = {"loading model": "loading the base model", "caching": "encoding images",
              "compiling": "compiling the UNet (the first step is slow)", "preview": "drawing previews"}
LOSS_SMOOTHING = 0.9  # exponential moving average: the raw per-step loss jumps with each batch's noise level


def fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def phase_text(view: RunView, state: str) -> str:
    """'starting the trainer…', 'loading the base model…', 'encoding images 12/34', 'drawing 4 preview(s) ·
    denoising step 12/40';
    '' while stepping."""
    if state not in ("running", "stopping"):
        return ""
    if view.state != "running":  # the process runs but has not written this attempt's first event yet
        return "starting the trainer…"
    ph = view.phase
    if not ph:
        return ""
    label = PHASE_TEXT.get(ph.get("phase"), str(ph.get("phase")))
    total = ph.get("total") or 0
    if ph.get("phase") == "preview" and ph.get("images") and total:
        return f"drawing {ph['images']} preview(s) · denoising step {ph.get('done', 0)}/{total}"
    return f"{label} {ph.get('done', 0)}/{total}" if total else f"{label}…"


def progress_html(state: str, view: RunView | None) -> str:
    ev = view.last_step if view else {}
    step = int(view.step if view else 0)
    total = (view.max_steps if view else None) or 0
    pct = 100.0 if state == "finished" else (100.0 * step / total if total else 0.0)
    text = f"step {step}/{total or '?'}"
    # speed and time left only while it trains: a stopped or finished run has no ETA
    if state == "running" and ev.get("it_s") is not None:
        text += f" · {ev['it_s']:.2f} it/s · ETA {fmt_eta(ev.get('eta_s'))}"
    doing = phase_text(view, state) if view else ""
    return (f'<div id="train-progress" data-state="{html.escape(state)}" data-step="{step}" data-total="{total}">'
            f'<div class="atelier-bar"><div class="atelier-fill atelier-{html.escape(state)}" style="width:{pct:.1f}%"></div></div>'
            f'<div class="atelier-progress-text"><b>{html.escape(state)}</b> · {html.escape(text)}</div>'
            f'<div id="train-phase" data-phase="{html.escape(str((view.phase or {}).get("phase", "")) if view else "")}">'
            f'{html.escape(doing)}</div></div>')


def loss_rows(view: RunView) -> list[tuple[int, float, str]]:
    """(step, loss, series) for the loss plot: the raw curve, its moving average and the validation loss
    (measured at each save, on held-out images: not smoothed, it is the same draw every time)."""
    rows, avg = [], None
    for step, loss in view.losses:
        avg = loss if avg is None else LOSS_SMOOTHING * avg + (1 - LOSS_SMOOTHING) * loss
        rows.append((step, loss, "raw"))
        rows.append((step, avg, "smoothed"))
    rows.extend((step, loss, "validation") for step, loss in view.val_losses)
    return rows


def _resolve(run_dir: Path, rel: str | None) -> Path | None:
    if not rel:
        return None
    try:
        p = inside(run_dir, rel)
    except UnsafePath:
        return None
    return p if p.is_file() else None


def preview_pairs(view: RunView, limit: int = 12) -> list[tuple[str, str]]:
    """Newest adapter previews, each after the base image drawn at the same seed and prompt."""
    base = {(s.get("prompt"), s.get("seed")): s for s in view.samples if s.get("kind") == "base"}
    out: list[tuple[str, str]] = []
    for s in reversed(view.adapter_samples()):
        if len(out) >= limit:
            break
        b = base.get((s.get("prompt"), s.get("seed")))
        bp, ap = _resolve(view.run_dir, b.get("path")) if b else None, _resolve(view.run_dir, s.get("path"))
        if ap is None:
            continue
        if bp is not None:
            out.append((str(bp), f"base · seed {s.get('seed')} · {s.get('prompt', '')}"))
        out.append((str(ap), f"step {s.get('step')} · adapter · seed {s.get('seed')}"))
    if not out:  # only base images so far (preview at step 0)
        out = [(str(p), f"base · seed {s.get('seed')} · {s.get('prompt', '')}")
               for s in base.values() if (p := _resolve(view.run_dir, s.get("path")))]
    return out
