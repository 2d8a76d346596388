"""The run store: a SQLite index of runs. Each run's folder is the truth; this is only the list."""
from __future__ import annotations

import secrets
import sqlite3
import time
from pathlib import Path

from ui.paths import safe_name

_COLUMNS = ("id", "name", "base", "preset", "state", "steps", "adapter", "folder", "created", "dataset")
_SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, base TEXT NOT NULL, preset TEXT NOT NULL,
    state TEXT NOT NULL, steps INTEGER NOT NULL DEFAULT 0, adapter TEXT, folder TEXT NOT NULL,
    created REAL NOT NULL, dataset TEXT NOT NULL DEFAULT '')"""


class RunStore:
    def __init__(self, db_path: Path):
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            # a store made before runs recorded their dataset gains the column (older rows: '')
            if "dataset" not in {r["name"] for r in db.execute("PRAGMA table_info(runs)")}:
                db.execute("ALTER TABLE runs ADD COLUMN dataset TEXT NOT NULL DEFAULT ''")

    def _connect(self) -> sqlite3.Connection:
        # a connection per call: Gradio runs handlers on many threads
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    @staticmethod
    def new_id(name: str) -> str:
        return f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_name(name, 'run', 32)}-{secrets.token_hex(3)}"

    def add(self, run_id: str, name: str, base: str, preset: str, folder: Path, steps: int = 0,
            dataset: str = "") -> dict:
        row = dict(id=run_id, name=name, base=base, preset=preset, state="created", steps=steps, adapter=None,
                   folder=str(folder), created=time.time(), dataset=dataset)
        with self._connect() as db:
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

    def delete(self, run_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
