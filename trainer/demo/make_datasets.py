"""Regenerate the demo data sets: python -m trainer.demo.make_datasets [ROOT] (default: datasets/)."""
from __future__ import annotations

import sys
from pathlib import Path

from trainer.demo.shapes import write_demo_datasets


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[2] / "datasets"
    for name, paths in write_demo_datasets(root).items():
        print(f"{root / name}: {len(paths)} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
