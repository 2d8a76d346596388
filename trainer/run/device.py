"""One training at a time per device, for every process on one data folder: the studios' runners and
`python -m trainer queue run`. Torch-free.

Whoever starts a trainer holds an exclusive file lock (train.lock) while it checks that the device is free
and launches, and names the run it launched in active.json; a run holds the device while its process lives."""
from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from trainer.run.atomic import atomic_write_text
from trainer.run.folder import RunFolder

ACTIVE_FILE = "active.json"
LOCK_FILE = "train.lock"


def exited_unreaped(pid: int) -> bool:
    """True while `pid` has exited but its parent has not collected its exit status yet (a zombie): the
    studio's watcher records the exit code a moment later."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def pid_alive(pid: int, run_dir: Path) -> bool:
    """True while `pid` is a live trainer for run_dir (a reused pid of another program is not)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if exited_unreaped(pid):
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the signal check
    if str(run_dir).encode() in cmd:
        return True
    # a warm trainer (trainer/warm.py) was started before its run existed: it writes into the run's log
    try:
        return cmd.split(b"\0")[1:4] == [b"-m", b"trainer", b"warm"] and \
            os.readlink(f"/proc/{pid}/fd/1") == str(RunFolder(run_dir).log.resolve())
    except OSError:
        return False


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


@contextmanager
def device_lock(root: Path):
    with open(Path(root) / LOCK_FILE, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def active_run(root: Path) -> tuple[str, Path] | None:
    """(run id, run folder) of the run training on this device now, if any."""
    act = read_json(Path(root) / ACTIVE_FILE)
    run_id, pid = act.get("run_id"), act.get("pid")
    if not run_id or not pid:
        return None
    run_dir = Path(act.get("folder") or Path(root) / "runs" / str(run_id))
    if pid_alive(int(pid), run_dir) and not RunFolder(run_dir).exit.exists():
        return str(run_id), run_dir
    return None


def hold(root: Path, run_id: str, run_dir: Path, pid: int) -> None:
    """Name the run just launched as the device's (the caller holds device_lock)."""
    atomic_write_text(Path(root) / ACTIVE_FILE, json.dumps({"run_id": run_id, "pid": pid, "folder": str(run_dir),
                                                            "started": time.time()}))
