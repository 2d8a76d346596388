"""Where a captioner's model comes from: a local folder the user points to, or a Hugging Face hub id
downloaded once (into the hub cache) when online, its bytes reported as `download` events.
Offline with no model, the error names the field and says how to put a model in a folder."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable

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


def download_progress(model: str, emit: Callable[..., object], every_s: float = 0.5) -> type:
    """A tqdm class for snapshot_download that also reports the bytes written so far as `download` events
    (at most every `every_s` seconds, and at the end), so the studio shows the model's size and progress.
    The bar itself still prints to the job's log."""
    from tqdm import tqdm

    last = [0.0]

    class DownloadBar(tqdm):
        def update(self, n=1):
            out = super().update(n)
            # the transfer bar's total is a guess grown as bytes arrive (compression, dedup): the bytes written
            # (the other bar) have the files' real sizes as their total
            if not str(self.desc or "").startswith("Downloading bytes"):
                now, done, total = time.monotonic(), int(self.n), int(self.total or 0)
                if now - last[0] >= every_s or (total and done >= total):
                    last[0] = now
                    emit("download", model=model, done=done, total=total)
            return out

    return DownloadBar


def resolve(spec: str, backend: str, needs: tuple[str, ...], emit: Callable[..., object] | None = None) -> Path:
    """The folder holding the model's files `needs`; ConfigError saying what is wrong and what to do.
    emit(type, **fields): where a hub download reports its progress (trainer.caption.events)."""
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
        bar = download_progress(spec, emit) if emit is not None else None
        folder = Path(snapshot_download(spec, local_files_only=_offline(), tqdm_class=bar))
    except Exception as e:  # not cached offline, no such repo, no network: all mean "no model here"
        why = ("the hub is offline (HF_HUB_OFFLINE) and it was never downloaded" if _offline()
               else f"{type(e).__name__}: {e}")
        raise ConfigError(f"{FIELD}: {spec}: {why}; {how_to_add(backend, needs)}") from None
    return resolve(str(folder), backend, needs, emit)
