"""Where the studio keeps its files, and the guards that keep every path inside them."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from trainer.run.store import DB_NAME, safe_name  # one rule for names, shared with the trainer's queue

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class UnsafePath(ValueError):
    """A name or path that would leave the studio's data folder."""


def inside(root: Path, *parts: str | Path) -> Path:
    """root/parts resolved, refused unless it stays inside root (symlinks resolved too)."""
    root = Path(root).resolve()
    rel = Path(*parts)
    # an over-long name would only fail later, in the middle of a handler, as an OSError
    if len(str(rel).encode()) > 4096 or any(len(p.encode()) > 255 for p in rel.parts):
        raise UnsafePath(f"{str(rel)[:80]}…: name too long")
    try:
        candidate = root.joinpath(*parts).resolve()
    except (OSError, ValueError) as e:  # symlink loops, null bytes
        raise UnsafePath(f"{str(rel)[:80]}: {e}") from None
    if candidate != root and not candidate.is_relative_to(root):
        raise UnsafePath(f"{Path(*parts)}: outside {root}")
    return candidate


@dataclass(frozen=True)
class DataDirs:
    """The app's data folder; nothing the browser can reach lives outside it."""
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> "DataDirs":
        dirs = cls(Path(root).expanduser().resolve())
        for p in (dirs.runs, dirs.datasets, dirs.models, dirs.presets, dirs.tmp, dirs.gradio_tmp):
            p.mkdir(parents=True, exist_ok=True)
        return dirs

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def presets(self) -> Path:
        return self.root / "presets"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def gradio_tmp(self) -> Path:
        return self.root / ".gradio"

    @property
    def db(self) -> Path:
        return self.root / DB_NAME

    def run_dir(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
            raise UnsafePath(f"run id {run_id!r}: not a run id")
        return inside(self.runs, run_id)

    def dataset_dir(self, name: str) -> Path:
        if not name or safe_name(name) != name:
            raise UnsafePath(f"dataset name {name!r}: use letters, digits, '-' and '_'")
        return inside(self.datasets, name)
