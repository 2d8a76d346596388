"""The run store: a SQLite index of runs, and the queue of runs waiting for the device. Each run's folder
is the truth about the run; this is only the list, and the queue's order.

Torch-free: the studio (ui/) and `python -m trainer queue` share this one table. A queued run is an
ordinary run folder whose row has state `queued` and a position; starting it is a claim (queued →
starting) made in one SQLite write transaction, so two processes on one data folder never start it twice.
"""
from __future__ import annotations

import re
import secrets
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

QUEUED, STARTING = "queued", "starting"
QUEUE_STATES = (QUEUED, STARTING)
DB_NAME = "runs.sqlite"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_COLUMNS = ("id", "name", "base", "preset", "state", "steps", "adapter", "folder", "created", "dataset", "position")
_SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, base TEXT NOT NULL, preset TEXT NOT NULL,
    state TEXT NOT NULL, steps INTEGER NOT NULL DEFAULT 0, adapter TEXT, folder TEXT NOT NULL,
    created REAL NOT NULL, dataset TEXT NOT NULL DEFAULT '', position INTEGER)"""
# columns added since the first stores: a store made before gains them (older rows get the default)
_ADDED = {"dataset": "TEXT NOT NULL DEFAULT ''", "position": "INTEGER"}


class QueueRefused(ValueError):
    """A queue change that cannot be made now (the run started meanwhile, is not queued, is first…)."""


def safe_name(text: str, fallback: str = "untitled", max_len: int = 48) -> str:
    """A file-system-safe name: letters, digits, '-' and '_' only (so no '..', no '/', no drive)."""
    name = _UNSAFE.sub("-", (text or "").strip()).strip("-_")[:max_len].strip("-_")
    return name or fallback


def shown_state(stored: str, from_folder: str) -> str:
    """A run's state from its row and its folder: a queued run's folder says only `created` (nothing ran
    yet), so there the row's queue state stands; otherwise the folder is the truth."""
    return stored if stored in QUEUE_STATES and from_folder == "created" else from_folder


class RunStore:
    def __init__(self, db_path: Path):
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            have = {r["name"] for r in db.execute("PRAGMA table_info(runs)")}
            for column, kind in _ADDED.items():
                if column not in have:
                    db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")

    def _connect(self) -> sqlite3.Connection:
        # a connection per call: Gradio runs handlers on many threads
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def _write(self):
        """One write transaction, taken at its start (BEGIN IMMEDIATE): a read-then-write inside it (the
        next queued run, a neighbour's position) cannot interleave with another process's."""
        db = self._connect()
        db.isolation_level = None
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @staticmethod
    def new_id(name: str) -> str:
        return f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_name(name, 'run', 32)}-{secrets.token_hex(3)}"

    def add(self, run_id: str, name: str, base: str, preset: str, folder: Path, steps: int = 0,
            dataset: str = "", queued: bool = False) -> dict:
        """A new row: state `created`, or `queued` at the end of the queue."""
        row = dict(id=run_id, name=name, base=base, preset=preset, state=QUEUED if queued else "created",
                   steps=steps, adapter=None, folder=str(folder), created=time.time(), dataset=dataset,
                   position=None)
        with self._write() as db:
            if queued:
                row["position"] = db.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM runs").fetchone()[0]
            db.execute(f"INSERT INTO runs ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})",
                       [row[c] for c in _COLUMNS])
        return row

    def get(self, run_id: str) -> dict | None:
        with self._connect() as db:
            r = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return dict(r) if r else None

    def list(self) -> list[dict]:
        with self._connect() as db:
            return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY created DESC")]

    def update(self, run_id: str, **fields) -> None:
        bad = set(fields) - set(_COLUMNS[1:])
        if bad:
            raise KeyError(f"unknown run-store columns: {sorted(bad)}")
        if not fields:
            return
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as db:
            db.execute(f"UPDATE runs SET {sets} WHERE id = ?", [*fields.values(), run_id])

    def sync(self, run_id: str, state: str, steps: int, adapter: str | None = None) -> None:
        """Bring a row up to what its folder says; a queued row whose folder says only `created` stays
        queued (in the same statement, so a claim in between is never undone)."""
        with self._connect() as db:
            db.execute("UPDATE runs SET state = CASE WHEN state IN (?, ?) AND ? = 'created' THEN state ELSE ? END, "
                       "steps = ?, adapter = COALESCE(?, adapter) WHERE id = ?",
                       (*QUEUE_STATES, state, state, steps, adapter, run_id))

    def delete(self, run_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    # ------------------------------------------------------------ the queue

    def queued(self) -> list[dict]:
        """The queued runs, first to start first."""
        with self._connect() as db:
            return [dict(r) for r in db.execute("SELECT * FROM runs WHERE state = ? ORDER BY position, created",
                                                (QUEUED,))]

    def move(self, run_id: str, delta: int) -> None:
        """Move a queued run up (delta -1) or down (+1) past its neighbour."""
        with self._write() as db:
            order = [r["id"] for r in db.execute(
                "SELECT id FROM runs WHERE state = ? ORDER BY position, created", (QUEUED,))]
            if run_id not in order:
                raise QueueRefused(f"Run `{run_id}` is not queued (it may have started).")
            i = order.index(run_id)
            j = i + delta
            if not 0 <= j < len(order):
                raise QueueRefused(f"Run `{run_id}` is already {'first' if delta < 0 else 'last'} in the queue.")
            order[i], order[j] = order[j], order[i]
            db.executemany("UPDATE runs SET position = ? WHERE id = ?", [(n + 1, r) for n, r in enumerate(order)])

    @contextmanager
    def while_queued(self, run_id: str):
        """Hold the store while changing a queued run (its config, its removal): the run cannot be claimed
        meanwhile; QueueRefused if it is not queued any more. Yields the open transaction."""
        with self._write() as db:
            row = db.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if not row or row["state"] != QUEUED:
                raise QueueRefused(f"Run `{run_id}` is not queued ({row['state'] if row else 'no such run'}): "
                                   "only a run that has not started can be changed or removed from the queue.")
            yield db

    def claim_next(self, under: Path | None = None) -> dict | None:
        """Take the first queued run (state → starting) in one transaction: exactly one caller gets it.
        `under`: only runs whose folder is <under>/<id> (the studio starts runs of its own runs folder)."""
        with self._write() as db:
            sql, args = "SELECT * FROM runs WHERE state = ?", [QUEUED]
            if under is not None:
                sql, args = sql + " AND folder = ? || id", args + [f"{under}/"]
            row = db.execute(sql + " ORDER BY position, created LIMIT 1", args).fetchone()
            if row is None:
                return None
            db.execute("UPDATE runs SET state = ? WHERE id = ?", (STARTING, row["id"]))
        return {**dict(row), "state": STARTING}

    def unclaim(self, run_id: str) -> None:
        """A claimed run that did not start goes back to its place in the queue."""
        with self._connect() as db:
            db.execute("UPDATE runs SET state = ? WHERE id = ? AND state = ?", (QUEUED, run_id, STARTING))

    def release_stale_claims(self, started) -> list[str]:
        """Claims left by a process that died between claiming and starting (started(row) is False: no
        trainer was ever launched there) go back to the queue. Returns their ids."""
        with self._connect() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM runs WHERE state = ?", (STARTING,))]
        stale = [r["id"] for r in rows if not started(r)]
        for run_id in stale:
            self.unclaim(run_id)
        return stale
