"""What the Train tab shows of a run, read incrementally from its events.jsonl."""
from __future__ import annotations

import html
import threading
from dataclasses import dataclass, field
from pathlib import Path

from trainer.run.events import EventTail

from ui.paths import UnsafePath, inside


@dataclass
class LiveRun:
    run_dir: Path
    tail: EventTail = None  # type: ignore[assignment]
    losses: list[tuple[int, float]] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    last_step: dict = field(default_factory=dict)
    max_steps: int | None = None
    finished: dict | None = None
    count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.tail = EventTail(self.run_dir)

    def poll(self) -> int:
        """Read new events; returns how many events have been seen in total."""
        with self.lock:
            for ev in self.tail.poll():
                self.count += 1
                t = ev.get("type")
                if t == "started":
                    self.max_steps = ev.get("max_steps")
                    self.finished = None
                elif t == "step":
                    self.last_step = ev
                    if ev.get("loss") is not None:
                        self.losses.append((int(ev.get("step", 0)), float(ev["loss"])))
                elif t == "sample":
                    self.samples.append(ev)
                elif t == "checkpoint":
                    self.checkpoints.append(ev)
                elif t == "warning":
                    self.warnings.append(ev.get("message", "") + (f" ({ev['file']})" if ev.get("file") else ""))
                elif t == "error":
                    self.errors.append(ev.get("message", ""))
                elif t == "finished":
                    self.finished = ev
            return self.count

    def _resolve(self, rel: str | None) -> Path | None:
        if not rel:
            return None
        try:
            p = inside(self.run_dir, rel)
        except UnsafePath:
            return None
        return p if p.is_file() else None

    def preview_pairs(self, limit: int = 12) -> list[tuple[str, str]]:
        """Newest adapter previews, each after the base image drawn at the same seed and prompt."""
        base = {}
        for s in self.samples:
            if s.get("kind") == "base":
                base[(s.get("prompt"), s.get("seed"))] = s
        out: list[tuple[str, str]] = []
        adapters = [s for s in self.samples if s.get("kind", "adapter") != "base"]
        for s in reversed(adapters):
            if len(out) >= limit:
                break
            b = base.get((s.get("prompt"), s.get("seed")))
            bp, ap = self._resolve(b.get("path")) if b else None, self._resolve(s.get("path"))
            if ap is None:
                continue
            if bp is not None:
                out.append((str(bp), f"base · seed {s.get('seed')} · {s.get('prompt', '')}"))
            out.append((str(ap), f"step {s.get('step')} · adapter · seed {s.get('seed')}"))
        if not out:  # only base images so far (preview at step 0)
            out = [(str(p), f"base · seed {s.get('seed')} · {s.get('prompt', '')}")
                   for s in base.values() if (p := self._resolve(s.get("path")))]
        return out


_CACHE: dict[str, LiveRun] = {}
_CACHE_LOCK = threading.Lock()


def live(run_dir: Path) -> LiveRun:
    """One shared reader per run folder; every session polls the same one."""
    key = str(run_dir)
    with _CACHE_LOCK:
        lr = _CACHE.get(key)
        if lr is None or not (run_dir / "events.jsonl").exists() or lr.tail.offset > (run_dir / "events.jsonl").stat().st_size:
            lr = _CACHE[key] = LiveRun(run_dir)
    return lr


def fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_html(state: str, lr: LiveRun) -> str:
    ev = lr.last_step
    step, total = int(ev.get("step", 0)), ev.get("max_steps") or lr.max_steps or 0
    pct = 100.0 * step / total if total else 0.0
    if state == "finished":
        pct = 100.0
    it_s = ev.get("it_s")
    text = (f"step {step}/{total or '?'} · {it_s:.2f} it/s · ETA {fmt_eta(ev.get('eta_s'))}" if it_s is not None
            else f"step {step}/{total or '?'}")
    return (f'<div id="train-progress" data-state="{html.escape(state)}" data-step="{step}" data-total="{total}">'
            f'<div class="atelier-bar"><div class="atelier-fill atelier-{html.escape(state)}" style="width:{pct:.1f}%"></div></div>'
            f'<div class="atelier-progress-text"><b>{html.escape(state)}</b> · {html.escape(text)}</div></div>')
