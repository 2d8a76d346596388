"""What a `model.base` string names, decided in one place. Torch-free: the GUI and the estimate read it.

- "builtin:<name>": a base shipped with the project (builtin:shapes, the demo base in trainer/assets);
- "tiny:<family>[:seed]": a tiny random model of a family's shape (tests, CI);
- "random:<family>[:seed]": the real architecture with random weights (benchmarks); sd15 = sd1, sd21 = sd2;
- a path: a diffusers folder or a single-file checkpoint (.safetensors, or a legacy pickle);
- "owner/name": a Hugging Face hub id (only when no such file or folder exists and it does not look
  like a path).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUILTINS = {"builtin:shapes": ASSETS / "shapes_base"}
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
FAMILY_ALIASES = {"sd15": "sd1", "sd21": "sd2"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FACTORIES = ("tiny", "random")


@dataclass(frozen=True)
class BaseSpec:
    kind: str  # "builtin" | "tiny" | "random" | "path" | "hub"
    text: str  # what the user wrote, stripped
    family: str = ""  # tiny / random: the family asked for
    seed: int = 0  # tiny / random

    @property
    def bundled(self) -> bool:
        """Built or shipped by the project (its UNet is not a standard family's size)."""
        return self.kind in ("builtin", "tiny")

    @property
    def path(self) -> Path | None:
        if self.kind == "builtin":
            return BUILTINS.get(self.text)
        return Path(self.text).expanduser() if self.kind == "path" else None


def looks_like_path(text: str) -> bool:
    """A string that is meant as a file or folder even if nothing is there (never a hub id)."""
    return (text.startswith((".", "/", "~", "\\")) or "\\" in text or text.count("/") != 1
            or Path(text).suffix.lower() in MODEL_SUFFIXES or ":" in text)


def parse_base(text: str) -> BaseSpec:
    """The kind of base `text` names (see the module docstring). Does not check that it exists, except
    that an existing file or folder always wins over a hub id of the same spelling."""
    text = (text or "").strip()
    prefix, _, rest = text.partition(":")
    if prefix == "builtin":
        return BaseSpec("builtin", text)
    if prefix in FACTORIES and rest:
        fam, _, seed = rest.partition(":")
        try:
            n = int(seed) if seed else 0
        except ValueError:
            raise ValueError(f"{text}: the seed after '{prefix}:{fam}:' must be a whole number") from None
        return BaseSpec(prefix, text, family=FAMILY_ALIASES.get(fam, fam), seed=n)
    try:
        exists = Path(text).expanduser().exists()
    except (OSError, ValueError):  # too long, or a null byte: not a file name
        exists = False
    if exists or looks_like_path(text) or not HUB_ID.match(text):
        return BaseSpec("path", text)
    return BaseSpec("hub", text)


def display_name(text: str) -> str:
    """A name to show and to record: file or folder stem, the built-in's name or the hub id; never an
    absolute path."""
    spec = parse_base(text)
    if spec.kind == "builtin":
        return text.split(":", 1)[1]
    if spec.kind == "hub":
        return spec.text
    p = Path(spec.text).expanduser()
    if p.suffix.lower() in MODEL_SUFFIXES or p.is_file():
        return p.stem
    return p.name
