"""Load a base model: diffusers folder, single-file checkpoint, hub id, or the tiny factory."""
from trainer.models.base import ASSETS, FAMILIES, Base, load_clip_tokenizer  # noqa: F401
