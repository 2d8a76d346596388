"""One entry point from a config's `model.base` string to a loaded Base (the grammar: trainer.models.spec)."""
from __future__ import annotations

from trainer.models.base import Base
from trainer.models.spec import parse_base


def load_any(spec: str, family: str = "auto", prediction_type: str = "auto", vae: str = "",
             zero_terminal_snr: str = "auto") -> Base:
    """`tiny:<family>[:seed]` builds a tiny random model (tests, CI), `random:<family>[:seed]` the real
    architecture with random weights (benchmarks); everything else — builtin:shapes, a diffusers folder,
    a single-file checkpoint, a hub id — goes to the real loader. prediction_type and zero_terminal_snr
    other than "auto" apply to every kind (a built base has no file to take them from)."""
    from trainer.imports import quiet_progress_bars

    quiet_progress_bars()  # the trainer and the tools report their own progress
    parsed = parse_base(spec)
    if parsed.kind == "tiny":
        from trainer.models.loading import set_noise_schedule
        from trainer.models.tiny import build_tiny

        return set_noise_schedule(build_tiny(parsed.family, seed=parsed.seed), prediction_type, zero_terminal_snr)
    if parsed.kind == "random":
        from trainer.models.loading import set_noise_schedule
        from trainer.models.random_arch import build_random_base

        return set_noise_schedule(build_random_base(parsed.family, seed=parsed.seed), prediction_type,
                                  zero_terminal_snr)
    from trainer.models.loading import load_base

    return load_base(spec, family=family, prediction_type=prediction_type, vae=vae,
                     zero_terminal_snr=zero_terminal_snr)
