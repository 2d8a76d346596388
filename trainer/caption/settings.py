"""The captioner's options, defined once: `python -m trainer caption --help` and the studio's Captioner
panel are generated from this model (labels, help, ranges and choices come from trainer.config.opt)."""
from __future__ import annotations

import argparse
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from trainer.config import ConfigError, field_meta, opt

LENGTH_TOKENS = {"short": 20, "medium": 40, "long": 75}  # max new tokens of the natural-language captioner


class CaptionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backend: Literal["tags", "natural"] = opt(
        "tags", "Captioner",
        "tags: a WD14-style ONNX tagger (SmilingWolf models) for anime / illustration bases (Illustrious, "
        "NoobAI, Pony, anime SD1.5); natural: a BLIP sentence captioner for realistic SDXL / SD1.5 bases.")
    model: str = opt(
        "", "Captioner model",
        "A local folder holding the model (tagger: model.onnx + selected_tags.csv; natural: a BLIP folder "
        "saved with save_pretrained), or a Hugging Face hub id such as SmilingWolf/wd-vit-tagger-v3 or "
        "Salesforce/blip-image-captioning-base (downloaded once, needs internet).")
    images: Literal["all", "missing", "selection"] = opt(
        "missing", "Which images", "all; missing: only images without a caption yet; selection: the images "
        "listed in the selection file (one path relative to the dataset per line).")
    selection_file: str = opt("", "Selection file", "With Which images = selection: a text file listing the "
                              "images' paths relative to the dataset, one per line.", advanced=True)
    mode: Literal["overwrite", "append", "skip"] = opt(
        "overwrite", "Existing captions", "overwrite: replace them; append: add the new caption after the old "
        "one; skip: leave images that already have a caption alone.")
    trigger: str = opt("", "Trigger word", "Put first in every caption (once), e.g. the name of your concept.")
    general_threshold: float = opt(0.35, "General tag threshold", "Tagger: keep general tags at least this "
                                   "confident (lower: more tags).", ge=0.0, le=1.0)
    character_threshold: float = opt(0.85, "Character tag threshold", "Tagger: keep character tags at least "
                                     "this confident.", ge=0.0, le=1.0)
    blacklist: str = opt("", "Tag blacklist", "Tagger: comma-separated tags never written (with spaces or "
                         "underscores, any case).")
    rating_tags: bool = opt(False, "Rating tags", "Tagger: also write the most likely rating tag (general, "
                            "sensitive, questionable, explicit).", advanced=True)
    keep_underscores: bool = opt(False, "Keep underscores", "Tagger: keep tag underscores (long_hair) instead of "
                            "spaces (long hair); kaomoji such as ^_^ are always kept.", advanced=True)
    caption_length: Literal["short", "medium", "long"] = opt(
        "medium", "Caption length", "Natural: the sentence's length (at most "
        + ", ".join(f"{k} {v}" for k, v in LENGTH_TOKENS.items()) + " tokens).")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """One flag per setting, with the schema's help, range and default."""
    defaults = CaptionSettings()
    for key, finfo in CaptionSettings.model_fields.items():
        m = field_meta(finfo)
        rng = f" [{m['ge']}..{m['le']}]" if "ge" in m else ""
        help_ = f"{m['label']}: {m['help']}{rng} (default {getattr(defaults, key)!r})"
        if finfo.annotation is bool:
            ap.add_argument(_flag(key), dest=key, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            ap.add_argument(_flag(key), dest=key, default=None, choices=m.get("choices"), help=help_)


def from_namespace(ns: argparse.Namespace) -> CaptionSettings:
    given = {k: getattr(ns, k) for k in CaptionSettings.model_fields if getattr(ns, k, None) is not None}
    return validate(given)


def validate(data: dict[str, Any]) -> CaptionSettings:
    """Settings from a dict; ConfigError names each bad field by its label."""
    try:
        return CaptionSettings.model_validate(data)
    except ValidationError as e:
        names = {k: field_meta(f)["label"] for k, f in CaptionSettings.model_fields.items()}
        raise ConfigError("; ".join(f"{names.get(str(err['loc'][0]), err['loc'][0]) if err['loc'] else ''}: "
                                    f"{err['msg']}" for err in e.errors())) from None


def to_argv(s: CaptionSettings) -> list[str]:
    """The flags that give `s` back through add_arguments (what the studio passes to the process)."""
    out = []
    for key, finfo in CaptionSettings.model_fields.items():
        v = getattr(s, key)
        if finfo.annotation is bool:
            out.append(_flag(key) if v else f"--no-{key.replace('_', '-')}")
        else:
            out.append(f"{_flag(key)}={v}")  # `=`: a value can never turn into an option
    return out
