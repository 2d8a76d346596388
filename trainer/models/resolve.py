"""One entry point from a config's `model.base` string to a loaded Base."""
from __future__ import annotations

from trainer.models.base import Base


def load_any(spec: str, family: str = "auto", prediction_type: str = "auto", vae: str = "") -> Base:
    """`tiny:<family>[:seed]` builds a tiny random model (tests, CI); everything else — builtin:shapes,
    a diffusers folder, a single-file checkpoint, a hub id — goes to the real loader."""
    if spec.startswith("tiny:"):
        from trainer.models.tiny import build_tiny

        parts = spec.split(":")
        return build_tiny(parts[1], seed=int(parts[2]) if len(parts) > 2 else 0)
    if spec.startswith("random:"):
        # architecture-true, random weights (benchmarks): `random:<family>[:seed]`, sd15 = sd1
        from trainer.models.random_arch import build_random_base

        parts = spec.split(":")
        fam = {"sd15": "sd1", "sd21": "sd2"}.get(parts[1], parts[1])
        return build_random_base(fam, seed=int(parts[2]) if len(parts) > 2 else 0)
    from trainer.models.loading import load_base

    return load_base(spec, family=family, prediction_type=prediction_type, vae=vae)
