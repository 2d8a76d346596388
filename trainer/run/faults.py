"""Deterministic fault injection for the crash tests.

ATELIER_FAULT="<point>@<step>" makes the trainer kill itself with SIGKILL (or, for point "enospc",
fail a save with 'No space left on device') when it reaches that point at that step. Unset — always,
outside the tests — it does nothing. Points: step (after an optimizer step), state-written (a state's
files are written but not yet renamed into place), state-renamed (renamed, 'latest' not yet updated),
adapter (just before the adapter file is written), sample (mid-way through preview sampling), enospc.
"""
from __future__ import annotations

import errno
import os
import signal


def crash_point(point: str, step: int) -> None:
    spec = os.environ.get("ATELIER_FAULT")
    if not spec or spec != f"{point}@{step}":
        return
    if point == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.kill(os.getpid(), signal.SIGKILL)
