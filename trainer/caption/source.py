"""Where a captioner's model comes from: a local folder the user points to, or a Hugging Face hub id
downloaded once (into the hub cache, with huggingface_hub's progress bar in the job's log) when online.
Offline with no model, the error names the field and says how to put a model in a folder."""
from __future__ import annotations

import os
import re
from pathlib import Path

from trainer.config import ConfigError

FIELD = "Captioner model (--model)"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
EXAMPLES = {"tags": "SmilingWolf/wd-vit-tagger-v3", "natural": "Salesforce/blip-image-captioning-base"}


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def how_to_add(backend: str, needs: tuple[str, ...]) -> str:
    ex = EXAMPLES[backend]
    return (f"put the model in a local folder ({', '.join(needs)}): on a machine with internet run "
            f"`hf download {ex} --local-dir MODELFOLDER`, copy MODELFOLDER here and set {FIELD} to its path")


def resolve(spec: str, backend: str, needs: tuple[str, ...]) -> Path:
    """The folder holding the model's files `needs`; ConfigError saying what is wrong and what to do."""
    spec = (spec or "").strip()
    if not spec:
        raise ConfigError(f"{FIELD}: empty; {how_to_add(backend, needs)}, or give a hub id such as "
                          f"{EXAMPLES[backend]} when online")
    folder = Path(spec).expanduser()
    if folder.is_dir():
        missing = [n for n in needs if not (folder / n).is_file()]
        if missing:
            raise ConfigError(f"{FIELD}: {folder} has no {', '.join(missing)}; {how_to_add(backend, needs)}")
        return folder
    if not HUB_ID.fullmatch(spec) or spec.startswith((".", "/", "~")):
        raise ConfigError(f"{FIELD}: {spec}: no such folder; {how_to_add(backend, needs)}")
    from huggingface_hub import snapshot_download

    try:
        # offline, this finds a copy downloaded earlier; online it downloads what is missing, with progress
        folder = Path(snapshot_download(spec, local_files_only=_offline()))
    except Exception as e:  # not cached offline, no such repo, no network: all mean "no model here"
        why = ("the hub is offline (HF_HUB_OFFLINE) and it was never downloaded" if _offline()
               else f"{type(e).__name__}: {e}")
        raise ConfigError(f"{FIELD}: {spec}: {why}; {how_to_add(backend, needs)}") from None
    return resolve(str(folder), backend, needs)
