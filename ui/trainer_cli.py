"""Calls to `python -m trainer <command>` for the short jobs (check, generate, meta): arg lists, no shell."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from trainer.config import REPO_ROOT


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def message(self) -> str:
        text = (self.stderr or self.stdout).strip()
        return "\n".join(text.splitlines()[-12:])


def run_trainer(args: list[str], timeout: float = 900, python: str = sys.executable) -> CliResult:
    if any("\x00" in a for a in args):  # the OS cannot pass it; say so instead of raising ValueError
        return CliResult(2, "", "a value contains a null character (\\x00), which a command line cannot carry")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    try:
        p = subprocess.run([python, "-m", "trainer", *args], cwd=str(REPO_ROOT), env=env, capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return CliResult(124, "", f"trainer {args[0]} took longer than {timeout:.0f} s and was stopped")
    return CliResult(p.returncode, p.stdout, p.stderr)
