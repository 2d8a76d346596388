"""Load a base model: diffusers folder, single-file checkpoint, hub id, or the tiny factory.

Names are imported on first use, so that `trainer.models.spec` and `trainer.models.detect` (torch-free)
can be imported without loading torch."""
_EXPORTS = {
    "ASSETS": "spec", "BUILTINS": "spec", "BaseSpec": "spec", "parse_base": "spec", "display_name": "spec",
    "FAMILIES": "base", "Base": "base", "load_clip_tokenizer": "base",
    "FamilyDetectionError": "detect", "detect_family": "detect", "detect_prediction_type": "detect",
    "ModelLoadError": "loading", "load_base": "loading", "load_vae": "loading",
    "build_random": "random_arch", "family_config_dir": "random_arch",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainer.models' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"trainer.models.{_EXPORTS[name]}"), name)
