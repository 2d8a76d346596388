"""Deterministic fault injection for the crash tests.

ATELIER_FAULT="<point>@<step>" makes the trainer kill itself with SIGKILL when it reaches that point at
that step, or, for the points in RAISES, raise that error there. Unset — always, outside the tests — it
does nothing. Points: step (after an optimizer step), state-written (a state's files are written but
not yet renamed into place), state-renamed (renamed, 'latest' not yet updated), adapter (just before
the adapter file is written), sample (mid-way through a preview round), enospc (a save fails with 'No
space left on device'), preview-error (a preview round fails just before its pipeline call); the
captioner's: caption (before image N), caption-rename (image N's caption is in its temp file, not yet renamed),
caption-sigterm (a SIGTERM arrives, as from the studio's Stop, while image N is captioned).
"""
from __future__ import annotations

import errno
import os
import signal

RAISES = {
    "enospc": lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    "preview-error": lambda: RuntimeError("preview pipeline failed (fault injected by ATELIER_FAULT)"),
}
SIGNALS = {"caption-sigterm": signal.SIGTERM}


def crash_point(point: str, step: int) -> None:
    spec = os.environ.get("ATELIER_FAULT")
    if not spec or spec != f"{point}@{step}":
        return
    if point in RAISES:
        raise RAISES[point]()
    if point in SIGNALS:
        os.kill(os.getpid(), SIGNALS[point])  # handled: the process goes on
        return
    os.kill(os.getpid(), signal.SIGKILL)
