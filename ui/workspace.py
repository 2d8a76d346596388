"""The server-side objects every tab shares."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from ui.calibration import Calibration
from ui.dataset_files import Limits
from ui.paths import DataDirs, UnsafePath, inside
from ui.runner import Runner
from ui.store import RunStore


@dataclass
class Studio:
    dirs: DataDirs
    store: RunStore
    runner: Runner
    limits: Limits = field(default_factory=Limits)
    model_roots: list[Path] = field(default_factory=list)  # folders the base picker may read models from
    python: str = sys.executable
    calibration: Calibration | None = None  # this machine's measured speed, for the estimate

    @classmethod
    def create(cls, data_dir: str | Path, models_dirs: list[str] | None = None, limits: Limits | None = None,
               python: str = sys.executable) -> "Studio":
        dirs = DataDirs.at(data_dir)
        store = RunStore(dirs.db)
        roots = [dirs.models] + [Path(m).expanduser().resolve() for m in models_dirs or []]
        return cls(dirs, store, Runner(dirs, store, python=python), limits or Limits(), roots, python,
                   Calibration(dirs.root, python))

    def run_dir(self, run_id: str) -> Path:
        return self.dirs.run_dir(run_id)

    def model_path(self, text: str) -> Path:
        """A base-model path typed by the user, allowed only inside the models folders."""
        p = Path(text).expanduser()
        for root in self.model_roots:
            try:
                return inside(root, p if p.is_absolute() else root / p)
            except UnsafePath:
                continue
        raise UnsafePath(f"{text}: base models must be inside {', '.join(str(r) for r in self.model_roots)}")

    def run_choices(self) -> list[tuple[str, str]]:
        return [(f"{r['name']} · {r['state']} · {r['id']}", r["id"]) for r in self.store.list()]
