"""The WD14-style tagger: SmilingWolf's ONNX models through onnxruntime (optional: pip install onnxruntime).

A model folder holds model.onnx and selected_tags.csv (columns name and category; category 9 = rating,
4 = character, 0 = general). Input: NHWC float32 BGR 0-255, the image padded to a white square and resized
to the model's own input size."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.caption.settings import CaptionSettings
from trainer.config import ConfigError

NEEDS = ("model.onnx", "selected_tags.csv")
RATING, GENERAL, CHARACTER = 9, 0, 4
# tags that are faces made of underscores: replacing theirs with spaces would break them (SmilingWolf's list)
KAOMOJI = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
                     ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})


@dataclass(frozen=True)
class Tag:
    name: str
    category: int


def read_tags(path: Path) -> list[Tag]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"{path}: unreadable: {e}") from None
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise ConfigError(f"{path}: needs the columns name and category (SmilingWolf's selected_tags.csv)")
    try:
        return [Tag(r["name"], int(r["category"])) for r in rows]
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: a category that is not a number") from None


def _key(tag: str) -> str:
    return tag.strip().lower().replace("_", " ")


def display(name: str, keep_underscores: bool) -> str:
    return name if keep_underscores or name in KAOMOJI else name.replace("_", " ")


def select_tags(probs, tags: list[Tag], s: CaptionSettings) -> list[str]:
    """The caption's tags from the model's scores: rating (only when asked: the most likely one), characters
    over the character threshold, general tags over the general one, minus the blacklist; by confidence."""
    if len(probs) != len(tags):
        raise ConfigError(f"the model gives {len(probs)} scores but selected_tags.csv lists {len(tags)} tags")
    banned = {_key(t) for t in s.blacklist.split(",") if t.strip()}
    picked: list[tuple[float, str]] = []
    ratings = [(float(p), t.name) for p, t in zip(probs, tags) if t.category == RATING]
    if s.rating_tags and ratings:
        picked.append(max(ratings))
    for p, t in zip(probs, tags):
        limit = {GENERAL: s.general_threshold, CHARACTER: s.character_threshold}.get(t.category)
        if limit is not None and float(p) >= limit:
            picked.append((float(p), t.name))
    picked.sort(key=lambda pn: -pn[0])  # stable: equal scores keep the csv's order
    return [display(n, s.keep_underscores) for _, n in picked if _key(n) not in banned]


class Tagger:
    def __init__(self, folder: Path, settings: CaptionSettings):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("the tagger needs onnxruntime: pip install onnxruntime "
                              "(or pip install -e .[caption])") from None
        self.settings = settings
        self.tags = read_tags(folder / "selected_tags.csv")
        try:
            self.session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for a damaged file
            raise ConfigError(f"{folder / 'model.onnx'}: not a usable ONNX model: {e}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        side = inp.shape[1] if len(inp.shape) == 4 else None
        if not isinstance(side, int) or inp.shape[3] != 3:
            raise ConfigError(f"{folder / 'model.onnx'}: input shape {inp.shape} is not [batch, size, size, 3]")
        self.size = side

    def prepare(self, image: Image.Image) -> np.ndarray:
        side = max(image.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        if side != self.size:
            square = square.resize((self.size, self.size), Image.BICUBIC)
        arr = np.asarray(square, dtype=np.float32)[:, :, ::-1]  # RGB → BGR, as the models were trained
        return np.ascontiguousarray(arr)[None]

    def caption(self, image: Image.Image) -> str:
        probs = self.session.run(None, {self.input_name: self.prepare(image)})[0][0]
        return ", ".join(select_tags(probs, self.tags, self.settings))
