"""One trainer process kept ready, so that pressing Train does not wait for torch and diffusers to import.

The studio asks for it when the user heads for training (the Train tab, a queued run about to start);
`take` hands it a run: the process (`python -m trainer warm`, trainer/warm.py) redirects its output into the
run's log and becomes that run's trainer. The runner then treats it like a freshly started one (pid file,
device hold, exit code, stop signals to its process group). Runs that need bitsandbytes, and any hand-over
that does not complete, start cold instead, so a warm process can only make a start faster, never fail it.
No Gradio here, so it is testable on its own.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

from trainer.config import REPO_ROOT


def output_path(pid: int) -> str:
    """Where the process's stdout goes now ('' if it cannot be read)."""
    try:
        return os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return ""


class WarmTrainer:
    def __init__(self, python: str, idle_log: Path, env_for_run):
        """python: the interpreter runs use; idle_log: where the process writes until it has a run;
        env_for_run(): the environment a freshly started trainer would get (the same for the warm one)."""
        self.python, self.idle_log, self.env_for_run = python, Path(idle_log), env_for_run
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def ensure(self) -> None:
        """Start one if none is waiting (cheap when one is)."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            self.idle_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.idle_log, "ab") as log:
                self._proc = subprocess.Popen([self.python, "-m", "trainer", "warm"], cwd=str(REPO_ROOT),
                                              stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                              env=self.env_for_run(), start_new_session=True)

    def take(self, train_argv: list[str], log: Path, timeout: float = 10.0) -> subprocess.Popen | None:
        """Hand the waiting process a run (`train` arguments, the run's log file); the process, once its
        output goes to that log, or None (none waiting, or it did not take the run: start cold)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return None
        try:
            proc.stdin.write((json.dumps({"argv": train_argv, "log": str(log)}) + "\n").encode())
            proc.stdin.close()
        except (OSError, ValueError):
            self._discard(proc)
            return None
        # the hand-over is complete when its stdout is the run's log: the runner's liveness check
        # (trainer.run.device.pid_alive) recognises a warm trainer by that
        deadline = time.monotonic() + timeout
        while output_path(proc.pid) != str(Path(log).resolve()):
            if proc.poll() is not None or time.monotonic() > deadline:
                self._discard(proc)
                return None
            time.sleep(0.01)
        return proc

    @staticmethod
    def _discard(proc: subprocess.Popen) -> None:
        try:
            proc.kill()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def close(self) -> None:
        """Let the waiting process go: it exits once it reads the end of its stdin (after its imports, if
        it is still importing; the studio quitting closes that pipe too)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()
            except OSError:
                pass
