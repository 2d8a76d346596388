"""Runs, Gradio-free: create, start, stop, resume, steer and delete a run, and what the Runs tab lists.
The tabs only lay out widgets and call these (no Gradio here, so it is testable on its own).

A RunRefused is a refusal to show the user as-is: it names what is wrong and what to do."""
from __future__ import annotations

import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.config import REPO_ROOT, TrainConfig, load_config, save_config
from trainer.run.events import COMMANDS, forget_view, request, run_view
from trainer.run.folder import RunFolder

from ui import dataset_files as df
from ui.workspace import Studio
from ui.paths import UnsafePath, inside
from ui.runner import RunnerBusy, resolve_state
from ui.store import QUEUE_STATES, QUEUED, QueueRefused, shown_state

# the datasets that ship with the project (the demo's concept and regularisation images): read-only to the
# studio, named repository-relative ("datasets/zkq-stripes") as the bundled presets name them
BUNDLED_DATASETS = REPO_ROOT / "datasets"
BUNDLED_PREFIX = "datasets/"
LIVE_STATES = ("running", "stopping")
DEMO = {"base": "builtin:shapes", "preset": "demo", "dataset": "datasets/zkq-stripes", "name": "zkq-stripes"}


class RunRefused(ValueError):
    """What the user asked cannot be done now; the message says why."""


# ---------------------------------------------------------------- datasets a run can train on

def dataset_choices(studio: Studio) -> list[tuple[str, str]]:
    """(label, value) of every dataset: the user's (by name) and the bundled ones (by repository path)."""
    own = sorted(p.name for p in studio.dirs.datasets.iterdir() if p.is_dir() and not p.name.startswith("."))
    bundled = sorted(p.name for p in BUNDLED_DATASETS.iterdir() if p.is_dir()) if BUNDLED_DATASETS.is_dir() else []
    return ([(n, n) for n in own] +
            [(f"{n} (bundled demo data)", f"{BUNDLED_PREFIX}{n}") for n in bundled])


def dataset_folder(studio: Studio, value: str) -> Path:
    """The folder of a dataset choice: a user's dataset by name, or a bundled one by repository path."""
    value = (value or "").strip()
    if not value:
        raise RunRefused("Dataset: pick the images to train on (upload them in the Dataset tab).")
    if value.startswith(BUNDLED_PREFIX):
        try:
            return inside(BUNDLED_DATASETS, value[len(BUNDLED_PREFIX):])
        except UnsafePath as e:
            raise RunRefused(f"Dataset: {e}") from None
    try:
        return studio.dirs.dataset_dir(value)
    except UnsafePath as e:
        raise RunRefused(f"Dataset: {e}") from None


def preset_dataset(cfg: TrainConfig) -> str | None:
    """The dataset a preset names for itself (a bundled one), as a dataset choice; None if it names none."""
    path = (cfg.dataset.path or "").strip().rstrip("/")
    if path.startswith(BUNDLED_PREFIX) and (REPO_ROOT / path).is_dir():
        return path
    return None


def count_images(studio: Studio, value: str, default_repeats: int = 1) -> tuple[int, int]:
    """(images, image views per epoch) of a dataset choice: an `N_name` folder's images count N times,
    the others default_repeats times; (0, 0) when there is none."""
    try:
        root = dataset_folder(studio, value)
    except RunRefused:
        return 0, 0
    if not root.is_dir():
        return 0, 0
    n = len(df.list_images(root))
    in_folders = df.folders(root)
    loose = n - sum(count for _, _, count in in_folders)
    return n, loose * default_repeats + sum(count * (reps or default_repeats) for _, reps, count in in_folders)


# ---------------------------------------------------------------- create and steer

def run_config(studio: Studio, run_id: str) -> TrainConfig:
    """The settings a run really trained with (config.used.toml once the trainer started), else its own."""
    return load_config(RunFolder(studio.run_dir(run_id)).effective_config)


def _create(studio: Studio, cfg: TrainConfig, name: str, dataset: str, preset: str, queued: bool) -> str:
    """A run folder as Train and the queue make it: a snapshot of the dataset, its config, a store row."""
    src = dataset_folder(studio, dataset)
    if not df.list_images(src):
        raise RunRefused(f"Dataset {dataset}: no images. Upload images in the Dataset tab first.")
    name = (name or "").strip() or "run"
    run_id = studio.store.new_id(name)
    folder = RunFolder(studio.run_dir(run_id))
    folder.dataset.mkdir(parents=True)
    df.copy_dataset(src, folder.dataset)
    cfg = cfg.model_copy(deep=True)
    cfg.dataset.path = str(folder.dataset)
    save_config(cfg, folder.config)
    studio.store.add(run_id, name, cfg.model.base, preset or "", folder.root, 0, dataset=dataset, queued=queued)
    return run_id


def _discard(studio: Studio, run_id: str) -> None:
    studio.store.delete(run_id)
    shutil.rmtree(studio.run_dir(run_id), ignore_errors=True)


def start_new(studio: Studio, cfg: TrainConfig, name: str, dataset: str, preset: str = "") -> str:
    """Create a run (a snapshot of the dataset, its config, a store row) and start it. Returns its id."""
    busy = studio.runner.active()
    if busy:
        raise RunRefused(f"Run `{busy}` is training on this device: stop it or wait for it.")
    run_id = _create(studio, cfg, name, dataset, preset, queued=False)
    try:
        studio.runner.start(run_id)
    except RunnerBusy as e:  # another session won the race for the device
        _discard(studio, run_id)
        raise RunRefused(str(e)) from None
    return run_id


# ---------------------------------------------------------------- the queue

def add_to_queue(studio: Studio, cfg: TrainConfig, name: str, dataset: str, preset: str = "") -> str:
    """Create a run exactly as Train does, but queued: it starts when the runs before it have ended.
    Returns its id; the queue worker starts it (at once when the device is free)."""
    return _create(studio, cfg, name, dataset, preset, queued=True)


def edit_queued(studio: Studio, run_id: str, cfg: TrainConfig) -> str:
    """Replace a queued run's settings (validated already: a TrainConfig); it keeps its dataset snapshot.
    Refused once the run has started (the store is held while the file is replaced, so it cannot start
    in between)."""
    folder = RunFolder(studio.run_dir(run_id))
    cfg = cfg.model_copy(deep=True)
    cfg.dataset.path = str(folder.dataset)
    try:
        with studio.store.while_queued(run_id) as db:
            save_config(cfg, folder.config)  # atomic: the worker reads the old file or the new one
            db.execute("UPDATE runs SET base = ? WHERE id = ?", (cfg.model.base, run_id))
    except QueueRefused as e:
        raise RunRefused(str(e)) from None
    return f"Saved the settings of queued run `{run_id}`."


def move_queued(studio: Studio, run_id: str, delta: int) -> str:
    try:
        studio.store.move(run_id, delta)
    except QueueRefused as e:
        raise RunRefused(str(e)) from None
    return f"Moved `{run_id}` {'up' if delta < 0 else 'down'}."


def remove_queued(studio: Studio, run_id: str) -> str:
    """Take a run out of the queue; its folder goes too (it never started: nothing of it is lost)."""
    run_dir = studio.run_dir(run_id)
    try:
        with studio.store.while_queued(run_id) as db:
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
    except QueueRefused as e:
        raise RunRefused(str(e)) from None
    folder = RunFolder(run_dir)
    if not (folder.events.exists() or folder.pid.exists()):  # never started: only its config and snapshot
        shutil.rmtree(run_dir, ignore_errors=True)
    return f"Removed `{run_id}` from the queue."


def queue_step(studio: Studio) -> str | None:
    """One turn of the queue: start the first queued run if the device is free. Returns the started id."""
    return studio.runner.start_next_queued()


class QueueWorker:
    """The studio's queue, worked in a daemon thread: every `interval` s, when no run holds the device,
    the first queued run starts. A failed or stopped run does not stop the queue; the queue is in the store,
    so a restarted studio continues it (a run still training is waited for, one that died is not re-run)."""

    def __init__(self, studio: Studio, interval: float = 2.0):
        self.studio, self.interval = studio, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "QueueWorker":
        self._thread = threading.Thread(target=self._loop, daemon=True, name="run-queue")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                queue_step(self.studio)
            except Exception as e:  # a bad row or a full disk must not end the queue for the night
                print(f"queue: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            self._stop.wait(self.interval)


def stop(studio: Studio, run_id: str) -> str:
    info = resolve_state(studio.run_dir(run_id))
    if not info.get("pid"):
        raise RunRefused(f"Run `{run_id}` is not running ({info['state']}).")
    return studio.runner.stop(run_id)


def ask(studio: Studio, run_id: str, command: str) -> str:
    """Ask the running trainer for a preview now / a save now; each call is one request, taken once."""
    if command not in COMMANDS or command == "stop":
        raise RunRefused(f"unknown request {command!r}")
    info = resolve_state(studio.run_dir(run_id))
    if info["state"] != "running":
        raise RunRefused(f"Run `{run_id}` is not training ({info['state']}).")
    request(studio.run_dir(run_id), command)
    return {"sample_now": "Preview asked for: it comes after the current step.",
            "save_now": "Save asked for: it comes after the current step."}[command]


def resume(studio: Studio, run_id: str, total_steps: int | None = None) -> str:
    """Continue a stopped or failed run from its last saved state; a finished run only to train more steps
    (total_steps, the new total, above what it trained)."""
    info = resolve_state(studio.run_dir(run_id))
    if info["state"] in LIVE_STATES:
        raise RunRefused(f"Run `{run_id}` is already running.")
    if (studio.store.get(run_id) or {}).get("state") in QUEUE_STATES:
        raise RunRefused(f"Run `{run_id}` is queued: it starts when the runs before it have ended.")
    cfg = run_config(studio, run_id)
    overrides = []
    trained = int(info.get("step") or 0)
    if info["state"] == "finished" or (total_steps and int(total_steps) != cfg.schedule.max_train_steps):
        if not total_steps or int(total_steps) <= trained:
            raise RunRefused(f"Run `{run_id}` has finished at step {trained}: to train more, give a new total "
                             f"of steps above {trained}.")
        overrides.append(f"schedule.max_train_steps={int(total_steps)}")
    try:
        studio.runner.start(run_id, resume=True, overrides=overrides)
    except (RunnerBusy, FileNotFoundError) as e:
        raise RunRefused(str(e)) from None
    if overrides:
        return f"Training `{run_id}` on from step {trained} to {int(total_steps)}."
    return f"Resumed `{run_id}`: it continues from its last saved state."


def delete(studio: Studio, run_id: str) -> str:
    row = studio.store.get(run_id)
    if not row:
        raise RunRefused("Pick a run.")
    if row["state"] == QUEUED:
        return remove_queued(studio, run_id)
    info = studio.runner.refresh(run_id)
    if info["state"] in LIVE_STATES:
        raise RunRefused(f"Run `{run_id}` is training: stop it first.")
    run_dir = studio.run_dir(run_id)
    shutil.rmtree(run_dir, ignore_errors=True)
    forget_view(run_dir)
    studio.store.delete(run_id)
    return f"Deleted `{run_id}`."


# ---------------------------------------------------------------- what the Runs tab lists

@dataclass
class RunSummary:
    id: str
    name: str
    state: str
    step: int
    max_steps: int | None
    dataset: str
    base: str
    created: float
    seconds: float
    final_loss: float | None
    thumbnail: Path | None
    position: int | None = None  # its place in the queue, while queued


def summary(studio: Studio, row: dict) -> RunSummary:
    run_dir = studio.run_dir(row["id"])
    info = resolve_state(run_dir)
    view = run_view(run_dir)
    thumb = None
    for s in reversed(view.adapter_samples()):
        try:
            p = inside(run_dir, s.get("path") or "")
        except UnsafePath:
            continue
        if p.is_file():
            thumb = p
            break
    return RunSummary(row["id"], row["name"], info["state"], view.step, view.max_steps, row.get("dataset") or "",
                      row["base"], row["created"], view.wall_seconds, view.loss, thumb)


def summaries(studio: Studio) -> list[RunSummary]:
    out = []
    for row in studio.store.list():
        try:
            if row["folder"] != str(studio.run_dir(row["id"])):
                continue  # queued from the command line with its own --run-dir: `trainer queue run` runs it
            s = summary(studio, row)
        except (UnsafePath, OSError):
            continue
        if s.state != row["state"] or s.step != row["steps"]:
            studio.store.sync(row["id"], s.state, s.step)
        s.state, s.position = shown_state(row["state"], s.state), row.get("position")
        out.append(s)
    # the queue first, in the order it runs; then every other run, newest first
    return sorted(out, key=lambda s: (s.position is None or s.state != QUEUED, s.position or 0))


def fmt_duration(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def created_text(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
