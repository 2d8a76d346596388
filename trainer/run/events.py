"""The run-folder protocol shared by the trainer and the GUI.

trainer → GUI: events.jsonl, one JSON object per line, appended and flushed as they happen.
GUI → trainer: control.json, rewritten atomically; the trainer polls it between steps.

Event types: phase (what the trainer is doing before its first step: phase, done, total), started,
step, sample, checkpoint, warning, error, finished (status: finished | stopped | failed). A reader must
tolerate a half-written last line (the writer may be mid-append).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from trainer.run.atomic import atomic_write_text

EVENTS_FILE = "events.jsonl"
CONTROL_FILE = "control.json"
CONFIG_FILE = "config.toml"
PID_FILE = "trainer.pid"
EVENT_TYPES = ("phase", "started", "step", "sample", "checkpoint", "warning", "error", "finished")
FINAL_STATES = ("finished", "stopped", "failed")


class EventWriter:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / EVENTS_FILE
        self.enabled = enabled
        self._seq = 0
        if enabled and self.path.exists():
            self._seq = sum(1 for _ in read_events(run_dir))

    def emit(self, type: str, **data: Any) -> dict:
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        self._seq += 1
        ev = {"seq": self._seq, "type": type, "time": round(time.time(), 3), **data}
        if self.enabled:
            line = json.dumps(ev, default=str) + "\n"
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                if type != "step":  # step events are frequent and re-derivable; the rest must survive a crash
                    os.fsync(f.fileno())
        return ev


def read_events(run_dir: Path, offset: int = 0) -> Iterator[dict]:
    """Events from byte `offset`; a truncated last line is skipped (it will be complete next read)."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.exists():
        return
    with open(path, "rb") as f:
        f.seek(offset)
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                yield json.loads(raw)
            except json.JSONDecodeError:
                continue


@dataclass
class EventTail:
    """Incremental reader: call poll() repeatedly to get only new events."""
    run_dir: Path
    offset: int = 0
    events: list[dict] = field(default_factory=list)

    def poll(self) -> list[dict]:
        path = Path(self.run_dir) / EVENTS_FILE
        if not path.exists():
            return []
        new = []
        with open(path, "rb") as f:
            f.seek(self.offset)
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                self.offset += len(raw)
                try:
                    new.append(json.loads(raw))
                except json.JSONDecodeError:
                    continue
        self.events.extend(new)
        return new


def write_control(run_dir: Path, **commands: Any) -> None:
    """GUI side: ask the trainer to stop / sample_now / save_now. Each command carries a nonce so that
    a repeated request is seen as new."""
    current = read_control(run_dir)
    for k, v in commands.items():
        current[k] = v
    current["nonce"] = time.time_ns()
    atomic_write_text(Path(run_dir) / CONTROL_FILE, json.dumps(current))


def read_control(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / CONTROL_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


class ControlPoller:
    """Trainer side: returns the commands that became set since the last poll."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._seen: dict[str, Any] = {}
        self._mtime = 0.0
        # requests already present at start (e.g. a stop left from an earlier process) are history
        self._seen = read_control(self.run_dir)

    def poll(self) -> set[str]:
        path = self.run_dir / CONTROL_FILE
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return set()
        if mtime == self._mtime:
            return set()
        self._mtime = mtime
        data = read_control(self.run_dir)
        fired = set()
        for key in ("stop", "sample_now", "save_now"):
            if data.get(key) and data.get(key) != self._seen.get(key):
                fired.add(key)
        if fired:
            self._seen = data
        return fired


def run_state(run_dir: Path) -> dict:
    """Summarise a run folder: state (created/running/finished/stopped/failed), last step, adapter…"""
    state: dict[str, Any] = {"state": "created", "step": 0, "max_steps": None, "loss": None, "error": None,
                             "adapter": None, "warnings": []}
    for ev in read_events(run_dir):
        t = ev["type"]
        if t == "started":
            state.update(state="running", max_steps=ev.get("max_steps"))
        elif t == "step":
            state.update(step=ev.get("step", 0), loss=ev.get("loss"))
        elif t == "warning":
            state["warnings"].append(ev.get("message", ""))
        elif t == "error":
            state["error"] = ev.get("message")
        elif t == "checkpoint" and ev.get("adapter"):
            state["adapter"] = ev["adapter"]
        elif t == "finished":
            state["state"] = ev.get("status", "failed")
            if ev.get("adapter"):
                state["adapter"] = ev["adapter"]
    return state
