"""The run folder's two streams: events (trainer → GUI) and control requests (GUI → trainer).

Torch-free; the trainer writes with EventWriter and consumes requests with ControlPoller, the GUI asks
with request() and reads with RunView, the one fold of the stream that the Train tab, the runner's state,
the adapter lookup and the Civitai bundle all use. RunView reads incrementally (from the byte offset it
reached), so a page that refreshes every second reads only what was appended since.

events.jsonl: one JSON object per line, appended and flushed as it happens. Every event carries
seq (1, 2, … across the whole file), type, time (unix seconds) and pid (the trainer process: a change of
pid is a new attempt, e.g. a resume), then the fields EVENTS lists for its type. A reader tolerates a
half-written last line (the writer may be mid-append): it is read once it is complete.

control/: one file per request, <time_ns>-<command>.json, created atomically and never overwritten, so
two presses of "sample now" are two requests; the trainer deletes each as it acts on it (consumed
exactly once) and says so with a `control` event. Requests older than the trainer process are left
from an earlier process and are dropped unread.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from trainer.run.atomic import write_new_file
from trainer.run.folder import FINAL_STATES, RunFolder


@dataclass(frozen=True)
class EventType:
    doc: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


EVENTS: dict[str, EventType] = {
    "phase": EventType("what the trainer is doing before/between steps, with its progress: "
                       "phase = 'loading model' | 'caching' | 'compiling' | 'preview'; done of total units (images "
                       "encoded; a preview round's denoising steps, over all its images); total 0 = no count; "
                       "images: how many previews the round draws", ("phase", "done", "total"), ("images",)),
    "started": EventType("the model and data are ready; training steps follow; masked_loss: whether the loss "
                         "is weighted by masks, masked_images: how many training images have one (0 when off); "
                         "crop_boxes, focus_points: how many training images have a crop box / focus point "
                         "(.crop.json); precision: what it trains in ('no' = fp32, 'bf16', 'fp16'), precision_note "
                         "why that is not what precision.mixed_precision asked for ('' when it is); compiled: "
                         "precision.compile (the first step then waits for torch.compile)",
                         ("max_steps", "family", "device", "dtype", "images", "resumed_from",
                          "trainable_params", "startup_s"), ("masked_loss", "masked_images", "crop_boxes",
                                                             "focus_points", "precision", "precision_note",
                                                             "compiled")),
    "step": EventType("one optimizer step; loss is the step's mean loss, eta_s the seconds left (None at "
                      "first), batch a digest of the images it trained on; it_s the step's pace without the "
                      "encoding of images met for the first time (dataset.cache_on_first_use), whose rest "
                      "eta_s adds at the pace so far; while some are left, encoded: latents and captions "
                      "encoded so far, to_encode: how many latents are still to encode",
                      ("step", "max_steps", "loss", "lr", "batch", "epoch", "it_s", "eta_s"),
                      ("encoded", "to_encode")),
    "sample": EventType("a preview PNG (path relative to the run folder); kind 'base' is drawn with the "
                        "adapter switched off", ("step", "path", "prompt", "seed", "kind", "index")),
    "checkpoint": EventType("a resumable state and an adapter were saved (paths relative to the run folder); "
                            "ema_adapter: the weights' moving average saved beside it (optimizer.ema on)",
                            ("step", "state", "adapter"), ("ema_adapter",)),
    "validation": EventType("the validation loss at step (trainer.train.validation): the plain MSE on the held-out "
                            "images at fixed timesteps and noise, so steps compare on the same draw; loss is the "
                            "mean over images × timesteps, per_timestep the mean at each of timesteps; ema_loss the "
                            "same for the EMA weights once they average; after a save, state / adapter / "
                            "ema_adapter name the checkpoint it measured (also in <state>/validation.json)",
                            ("step", "loss", "images", "timesteps", "per_timestep", "seconds"),
                            ("ema_loss", "state", "adapter", "ema_adapter")),
    "memory": EventType("the peak memory of a phase of the run that just ended (trainer.train.memory): phase = "
                        "'model load' | 'caching' | 'training' | 'previews' (a phase met again reports each "
                        "stretch); peak_rss_mib: the process's peak resident memory in it; cuda_peak_mib: the "
                        "peak CUDA memory torch allocated (CUDA only); rss_since_start: true where the system "
                        "would not reset the RSS peak, so it is the process's since it started",
                        ("phase", "peak_rss_mib"), ("cuda_peak_mib", "rss_since_start")),
    "control": EventType("the trainer took a control request (command: stop | sample_now | save_now)",
                         ("command", "request")),
    "warning": EventType("something the user should know; training goes on", ("message",),
                         ("file", "severity")),
    "error": EventType("why the run failed", ("message",), ("traceback", "step")),
    "finished": EventType("the last event of an attempt: status finished | stopped | failed; a finished or "
                          "stopped run names its adapter; memory: {phase: the memory event's fields, the highest over the "
                          "phase's stretches}", ("status", "step"), ("adapter", "wall_s", "timing", "memory")),
}
EVENT_TYPES = tuple(EVENTS)
COMMANDS = ("stop", "sample_now", "save_now")


class EventWriter:
    schema: dict[str, EventType] = EVENTS  # the event types this writer may emit (the captioner has its own)

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = RunFolder(run_dir).events
        self.enabled = enabled
        self._seq = 0
        if enabled and self.path.exists():
            tail = EventTail(self.path)
            self._seq = len(tail.poll())

    def emit(self, type: str, **data: Any) -> dict:
        spec = self.schema.get(type)
        if spec is None:
            raise ValueError(f"unknown event type {type!r}")
        missing = [f for f in spec.required if f not in data]
        if missing:
            raise ValueError(f"{type} event without {', '.join(missing)} (see trainer.run.events.EVENTS)")
        self._seq += 1
        ev = {"seq": self._seq, "type": type, "time": round(time.time(), 3), "pid": os.getpid(), **data}
        if self.enabled:
            line = json.dumps(ev, default=str) + "\n"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                if type not in ("step", "phase"):  # frequent and re-derivable; the rest must survive a crash
                    os.fsync(f.fileno())
        return ev


@dataclass
class EventTail:
    """Incremental reader of events.jsonl: poll() returns only the complete lines added since the last
    poll. A file that shrank (deleted and re-created) is read again from the start: `restarted` says so."""
    path: Path
    offset: int = 0
    restarted: bool = False

    def poll(self) -> list[dict]:
        self.restarted = False
        try:
            size = self.path.stat().st_size
        except OSError:
            size = 0
        if size < self.offset:
            self.offset, self.restarted = 0, True
        if size == self.offset:
            return []
        new = []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # half-written: read it once it is complete
                self.offset += len(raw)
                try:
                    ev = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                if isinstance(ev, dict) and "type" in ev:
                    new.append(ev)
        return new


@dataclass
class RunView:
    """Everything the GUI shows of a run's events, folded as they arrive. state is what the events say
    (created / running / finished / stopped / failed); the runner adds what the process says."""
    run_dir: Path
    state: str = "created"
    step: int = 0
    max_steps: int | None = None
    loss: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    validations: list[dict] = field(default_factory=list)  # the validation events
    last_step: dict = field(default_factory=dict)
    phase: dict | None = None  # the latest phase event, until the next step
    samples: list[dict] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)
    adapter: str | None = None
    warnings: list[str] = field(default_factory=list)  # of the latest attempt
    errors: list[str] = field(default_factory=list)    # of the latest attempt
    error: str | None = None
    stop_taken: bool = False  # the latest attempt took a stop request
    _earlier_seconds: float = 0.0  # trainer wall time of the attempts before the latest
    count: int = 0
    _pid: Any = None
    _attempt_start: float | None = None
    _attempt_last: float | None = None

    def __post_init__(self):
        self.run_dir = Path(self.run_dir)
        self._tail = EventTail(RunFolder(self.run_dir).events)
        self._lock = threading.Lock()

    def update(self) -> "RunView":
        """Fold the events appended since the last update (thread-safe); returns self."""
        with self._lock:
            new = self._tail.poll()
            if self._tail.restarted:
                self._reset()
            for ev in new:
                self._fold(ev)
        return self

    def _reset(self) -> None:
        for f in fields(self):
            if f.name != "run_dir":
                setattr(self, f.name, f.default if f.default_factory is MISSING else f.default_factory())

    def _new_attempt(self, ev: dict) -> None:
        if self._attempt_start is not None:
            self._earlier_seconds += (self._attempt_last or self._attempt_start) - self._attempt_start
        self._attempt_start = self._attempt_last = ev.get("time")
        self.warnings, self.errors, self.error = [], [], None
        self.phase, self.stop_taken = None, False
        self.state = "running"

    def _fold(self, ev: dict) -> None:
        self.count += 1
        if ev.get("pid") != self._pid or self._attempt_start is None:
            self._pid = ev.get("pid")
            self._new_attempt(ev)
        self._attempt_last = ev.get("time", self._attempt_last)
        t = ev.get("type")
        if t == "phase":
            self.phase = ev
        elif t == "started":
            self.max_steps = ev.get("max_steps")
        elif t == "step":
            self.last_step, self.phase = ev, None
            self.step = int(ev.get("step") or 0)
            self.max_steps = ev.get("max_steps") or self.max_steps
            if ev.get("loss") is not None:
                self.loss = float(ev["loss"])
                self.losses.append((self.step, self.loss))
        elif t == "sample":
            self.samples.append(ev)
        elif t == "validation":
            self.validations.append(ev)
            if ev.get("loss") is not None:
                self.val_losses.append((int(ev.get("step") or 0), float(ev["loss"])))
        elif t == "checkpoint":
            self.checkpoints.append(ev)
            self.adapter = ev.get("adapter") or self.adapter
        elif t == "control":
            self.stop_taken = self.stop_taken or ev.get("command") == "stop"
        elif t == "warning":
            self.warnings.append(ev.get("message", "") + (f" ({ev['file']})" if ev.get("file") else ""))
        elif t == "error":
            self.errors.append(ev.get("message", ""))
            self.error = ev.get("message")
        elif t == "finished":
            self.phase = None
            self.state = ev.get("status") if ev.get("status") in FINAL_STATES else "failed"
            self.step = int(ev.get("step") or self.step)
            self.adapter = ev.get("adapter") or self.adapter

    @property
    def wall_seconds(self) -> float:
        """Trainer wall time over every attempt so far."""
        last = ((self._attempt_last or 0) - self._attempt_start) if self._attempt_start is not None else 0.0
        return self._earlier_seconds + last

    def adapters(self) -> list[tuple[int, str]]:
        """(step, path relative to the run folder) of every adapter the trainer wrote, oldest first."""
        out: list[tuple[int, str]] = []
        for ev in self.checkpoints:
            if ev.get("adapter") and (int(ev.get("step") or 0), ev["adapter"]) not in out:
                out.append((int(ev.get("step") or 0), ev["adapter"]))
        return out

    def adapter_samples(self) -> list[dict]:
        return [s for s in self.samples if s.get("kind", "adapter") != "base"]


def finished_at(run_dir: Path) -> int | None:
    """The step at which the run's latest attempt finished (its adapter written), else None."""
    view = RunView(Path(run_dir)).update()
    return view.step if view.state == "finished" else None


def nothing_to_resume(run_dir: Path, max_steps: int) -> str | None:
    """Why resuming this run would train nothing (it already finished max_steps), else None. A finished
    run is continued only to more steps, never copied: the caller refuses before loading or writing."""
    done = finished_at(run_dir)
    if done is None or done < max_steps:
        return None
    return (f"this run has already finished {done} steps (schedule.max_train_steps = {max_steps}); to train "
            "more, resume with a larger total: --set schedule.max_train_steps=N")


_VIEWS: dict[str, RunView] = {}
_VIEWS_LOCK = threading.Lock()


def run_view(run_dir: Path) -> RunView:
    """The process's one up-to-date view of a run folder: every page, timer and lookup shares it, and each
    call reads only the events appended since the previous one."""
    key = str(Path(run_dir))
    with _VIEWS_LOCK:
        view = _VIEWS.get(key)
        if view is None:
            view = _VIEWS[key] = RunView(Path(run_dir))
    return view.update()


def forget_view(run_dir: Path) -> None:
    with _VIEWS_LOCK:
        _VIEWS.pop(str(Path(run_dir)), None)


# ---------------------------------------------------------------- control requests

def request(run_dir: Path, command: str) -> str:
    """GUI side: ask the trainer to stop / sample_now / save_now. Each call is a new request, taken once."""
    if command not in COMMANDS:
        raise ValueError(f"unknown control command {command!r}; expected one of {', '.join(COMMANDS)}")
    folder = RunFolder(run_dir).control
    while True:
        rid = f"{time.time_ns()}-{command}"
        try:
            write_new_file(folder / f"{rid}.json", json.dumps({"command": command, "request": rid}).encode())
            return rid
        except FileExistsError:  # two presses in the same nanosecond: take the next one
            continue


def pending_requests(run_dir: Path) -> list[str]:
    """Commands asked for and not yet taken by the trainer, oldest first."""
    folder = RunFolder(run_dir).control
    try:
        names = sorted(p.name for p in folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except OSError:
        return []
    return [n[:-5].split("-", 1)[1] for n in names if "-" in n]


def clear_requests(run_dir: Path) -> None:
    """Drop requests nobody took (a stop left by an earlier process must not stop the next one)."""
    folder = RunFolder(run_dir).control
    if folder.is_dir():
        for p in folder.glob("*.json"):
            p.unlink(missing_ok=True)


class ControlPoller:
    """Trainer side: poll() returns the commands requested since the last poll; each request file is
    taken (deleted) once and reported with a `control` event. Requests from before this process are stale."""

    def __init__(self, run_dir: Path, events: EventWriter | None = None):
        self.folder = RunFolder(run_dir).control
        self.events = events
        self.since = time.time_ns()

    def poll(self) -> set[str]:
        try:
            names = sorted(p.name for p in self.folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
        except OSError:
            return set()
        taken: set[str] = set()
        for name in names:
            rid = name[:-5]
            stamp, _, command = rid.partition("-")
            try:
                (self.folder / name).unlink()
            except FileNotFoundError:
                continue  # taken by someone else
            if not stamp.isdigit() or int(stamp) < self.since or command not in COMMANDS:
                continue  # left from an earlier process, or not a request
            taken.add(command)
            if self.events is not None:
                self.events.emit("control", command=command, request=rid)
        return taken
