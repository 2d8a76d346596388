"""Load a base model: diffusers folder, single-file checkpoint, hub id, or the tiny factory."""
from trainer.models.base import ASSETS, FAMILIES, Base, load_clip_tokenizer  # noqa: F401
from trainer.models.detect import FamilyDetectionError, detect_family, detect_prediction_type  # noqa: F401
from trainer.models.loading import ModelLoadError, display_name, load_base, load_vae  # noqa: F401
from trainer.models.random_arch import build_random, family_config_dir  # noqa: F401
