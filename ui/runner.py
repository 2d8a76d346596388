"""Starts, watches and stops trainer processes. One training at a time per device, across sessions and
app processes: the check-and-start runs under an exclusive file lock, and the active run is a file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from trainer.run.atomic import atomic_write_text
from trainer.config import REPO_ROOT, ConfigError, load_config
from trainer.imports import needs_bitsandbytes
from trainer.run.events import clear_requests, pending_requests, request, run_view
from trainer.run.device import active_run, device_lock, exited_unreaped, hold, pid_alive, read_json
from trainer.run.folder import EXIT_CONFIG, EXIT_STATES, FINAL_STATES, RunFolder

from ui.paths import DataDirs
from ui.store import RunStore
from ui.warm import WarmTrainer

WARM_ENV = "ATELIER_WARM_TRAINER"  # "0": always start trainers cold


class RunnerBusy(RuntimeError):
    """Another training holds the device."""


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _note_failure(run_dir: Path, message: str) -> None:
    """A run that never started: why, in its log, and an exit code, so its folder says failed too."""
    folder = RunFolder(run_dir)
    try:
        with open(folder.log, "a", encoding="utf-8") as f:
            f.write(message + "\n")
        atomic_write_text(folder.exit, json.dumps({"code": EXIT_CONFIG, "time": time.time()}))
    except OSError:
        pass


def _with_log(message: str, folder: RunFolder) -> str:
    tail = folder.log_tail()
    return message + (f":\n{tail}" if tail else "")


def process_status(run_dir: Path) -> tuple[int | None, bool, dict]:
    """(pid from the folder's pid file, whether that process still runs, the exit code the watcher recorded
    ({} until then)) of the process started for run_dir (a training run or a caption job)."""
    folder = RunFolder(run_dir)
    try:
        pid = int(folder.pid.read_text().strip())
    except (OSError, ValueError):
        pid = None
    exit_info = read_json(folder.exit)
    alive = bool(pid) and not exit_info and pid_alive(int(pid), run_dir)
    if pid and not exit_info and not alive and exited_unreaped(int(pid)):
        # it has just exited and the watcher is about to record its exit code: not "failed without one" yet
        alive = True
    return pid, alive, exit_info


def trainer_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    return env


def spawn(args: list[str], run_dir: Path, warm: WarmTrainer | None = None) -> subprocess.Popen:
    """Start `python -m trainer …` (an argument list, never a shell) in a session of its own (a stop signals
    its whole group), output into the folder's log, its pid into the pid file. With `warm`, a `train` is
    handed to the waiting warm trainer when there is one."""
    folder = RunFolder(run_dir)
    for stale in (folder.exit, folder.pid):
        stale.unlink(missing_ok=True)
    proc = warm.take(args[4:], folder.log) if warm is not None and args[3:4] == ["train"] else None
    if proc is None:
        log = open(folder.log, "ab")
        try:
            proc = subprocess.Popen(args, cwd=str(REPO_ROOT), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=trainer_env(), start_new_session=True)
        finally:
            log.close()
    atomic_write_text(folder.pid, str(proc.pid))
    return proc


def record_exit(proc: subprocess.Popen, run_dir: Path) -> None:
    """Wait for the process and write its exit code into the folder (exit.json)."""
    code = proc.wait()
    atomic_write_text(RunFolder(run_dir).exit, json.dumps({"code": code, "time": time.time()}))


def resolve_state(run_dir: Path) -> dict:
    """The run's state from its folder: the events (read incrementally by the shared view), the pid file,
    the exit code the watcher recorded. The exit code wins over events: a process that failed is never
    shown as finished. Keys: state, step, max_steps, loss, error, adapter, warnings, pid (while alive),
    exit_code (once reaped)."""
    folder = RunFolder(run_dir)
    view = run_view(run_dir)
    info = {"state": view.state, "step": view.step, "max_steps": view.max_steps, "loss": view.loss,
            "error": view.error, "adapter": view.adapter, "warnings": list(view.warnings)}
    pid, alive, exit_info = process_status(run_dir)
    stop_requested = view.stop_taken or "stop" in pending_requests(run_dir)
    info["pid"] = pid if alive else None
    if alive:
        info["state"] = "stopping" if stop_requested else "running"
        return info
    if exit_info:
        code = exit_info.get("code")
        info["exit_code"] = code
        if code in EXIT_STATES:
            info["state"] = EXIT_STATES[code]
        elif stop_requested and isinstance(code, int) and code < 0:
            info["state"] = "stopped"
            info["warnings"].append("the trainer did not stop in time and was killed; the last save may be older")
        else:
            info["state"] = "failed"
        if info["state"] == "failed" and not info.get("error"):
            info["error"] = _with_log(f"trainer exited with code {code}", folder)
        return info
    if info["state"] == "running" or (pid and info["state"] not in FINAL_STATES):
        # the process is gone and left no final event and no exit code (app restarted while it died)
        info["state"] = "failed"
        info["error"] = info.get("error") or _with_log("the trainer process ended without reporting", folder)
    return info


class Runner:
    def __init__(self, dirs: DataDirs, store: RunStore, python: str = sys.executable,
                 stop_grace_s: float = 30.0, term_grace_s: float = 15.0):
        self.dirs, self.store, self.python = dirs, store, python
        self.stop_grace_s, self.term_grace_s = stop_grace_s, term_grace_s
        self._procs: dict[str, subprocess.Popen] = {}
        self.warm = WarmTrainer(python, dirs.root / "warm-trainer.log", trainer_env)
        self.warm_enabled = os.environ.get(WARM_ENV, "1") != "0"

    def warm_up(self) -> None:
        """Have a trainer process ready for the next Train (the user is heading for it)."""
        if self.warm_enabled:
            self.warm.ensure()

    def _device_lock(self):
        return device_lock(self.dirs.root)

    def active(self) -> str | None:
        """The run now training on this device, if any (started by any studio or by `trainer queue run`)."""
        act = active_run(self.dirs.root)
        return act[0] if act else None

    def start(self, run_id: str, resume: bool = False, overrides: list[str] | None = None) -> int:
        """Launch `python -m trainer train` on the run's config (the one it last ran with, on a resume);
        RunnerBusy if another run holds the device. Returns the pid."""
        with self._device_lock():
            busy = self.active()
            if busy:
                raise RunnerBusy(f"Run {busy} is training on this device; wait for it or stop it first.")
            proc = self._launch(run_id, resume, overrides)
        return self._started(run_id, proc)

    def start_next_queued(self) -> str | None:
        """The queue's step: when no run holds the device, claim the first queued run and start it. The
        device lock makes the check, the claim and the launch one step for every studio on this data folder;
        the claim is an SQLite transaction, so `python -m trainer queue run` never gets the same run either.
        A queued run that cannot start (its config is gone) is marked failed and the next one is tried.
        Returns the started run's id, or None."""
        with self._device_lock():
            if self.active():
                return None
            # a claim whose process died before launching it (no pid file) goes back to its place
            self.store.release_stale_claims(lambda row: RunFolder(Path(row["folder"])).pid.exists())
            while (row := self.store.claim_next(under=self.dirs.runs)) is not None:
                try:
                    proc = self._launch(row["id"])
                except (OSError, ValueError) as e:  # a missing or unreadable config, a bad id
                    self.store.update(row["id"], state="failed")
                    _note_failure(Path(row["folder"]), f"the queued run could not start: {e}")
                    continue
                break
            else:
                return None
        self._started(row["id"], proc)
        return row["id"]

    def _launch(self, run_id: str, resume: bool = False, overrides: list[str] | None = None) -> subprocess.Popen:
        """Start the trainer process; the caller holds the device lock and has checked it is free."""
        run_dir = self.dirs.run_dir(run_id)
        folder = RunFolder(run_dir)
        config = folder.effective_config
        if not config.exists():
            raise FileNotFoundError(f"{folder.config}: missing")
        clear_requests(run_dir)  # a stop left from an earlier process must not stop the new one
        args = [self.python, "-m", "trainer", "train", str(config)]
        if resume:
            args.append("--resume")
        args += [f"--set={o}" for o in overrides or []]  # `=`: a value can never turn into an option
        proc = spawn(args, run_dir, self.warm if self._warm_can_run(config, overrides) else None)
        hold(self.dirs.root, run_id, run_dir, proc.pid)
        return proc

    def _warm_can_run(self, config: Path, overrides: list[str] | None) -> bool:
        """The warm trainer hides bitsandbytes: QLoRA and the 8-bit optimizer start cold (so does a config
        that does not load: the cold start reports why in the run's log)."""
        if not self.warm_enabled:
            return False
        try:
            return not needs_bitsandbytes(load_config(config, overrides or []))
        except (ConfigError, OSError):
            return False

    def _started(self, run_id: str, proc: subprocess.Popen) -> int:
        self._procs[run_id] = proc
        self.store.update(run_id, state="running")
        threading.Thread(target=self._watch, args=(run_id, proc), daemon=True, name=f"watch-{run_id}").start()
        return proc.pid

    def _watch(self, run_id: str, proc: subprocess.Popen) -> None:
        record_exit(proc, self.dirs.run_dir(run_id))
        self._procs.pop(run_id, None)
        self.refresh(run_id)
        if self.store.queued():  # the queue's next run starts warm
            self.warm_up()

    def refresh(self, run_id: str) -> dict:
        """Re-read the run folder and bring the store's row up to date."""
        run_dir = self.dirs.run_dir(run_id)
        info = resolve_state(run_dir)
        self.store.sync(run_id, info["state"], int(info.get("step") or 0), info.get("adapter"))
        return info

    def stop(self, run_id: str, wait: bool = False) -> str:
        """Graceful stop: a stop request in control/, then SIGTERM, then SIGKILL the process group."""
        run_dir = self.dirs.run_dir(run_id)
        info = resolve_state(run_dir)
        if not info.get("pid"):
            return f"Run {run_id} is not running ({info['state']})."
        request(run_dir, "stop")
        t = threading.Thread(target=self._escalate, args=(run_id, int(info["pid"])), daemon=True)
        t.start()
        if wait:
            t.join()
        return f"Stopping {run_id}: the trainer saves and exits."

    def _escalate(self, run_id: str, pid: int) -> None:
        run_dir = self.dirs.run_dir(run_id)
        for sig, grace in ((None, self.stop_grace_s), (signal.SIGTERM, self.term_grace_s), (signal.SIGKILL, 5.0)):
            if sig is not None:
                try:
                    os.killpg(pid, sig)  # start_new_session made pid the group id
                except (ProcessLookupError, PermissionError):
                    return
            deadline = time.monotonic() + grace
            # a trainer still writing events (taking the stop, saving, finishing) is working, not hung: its
            # grace runs from its latest event too, so a slow step or save is never cut short by SIGKILL
            while time.monotonic() < deadline or time.time() - _mtime(RunFolder(run_dir).events) < grace:
                if not pid_alive(pid, run_dir):
                    return
                time.sleep(0.2)
