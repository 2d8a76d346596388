"""With latent and text caching on, a training step runs the UNet alone: forward hooks on the real VAE and
text-encoder modules count zero calls inside the loop; a second run on the same dataset encodes nothing."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_dataset
from trainer.config import load_preset
from trainer.train.loop import EXIT_OK, Trainer


class HookedTrainer(Trainer):
    """The real Trainer; after the model loads, forward pre-hooks count every call of the VAE's encoder and
    decoder and of each text encoder, split by phase (set-up incl. cache precompute, or the training loop)."""

    def _prepare_caches(self) -> None:
        self.calls = {"setup": {}, "loop": {}}
        self.phase = "setup"
        mods = {"vae.encoder": self.base.vae.encoder, "vae.decoder": self.base.vae.decoder}
        mods.update({f"text_encoder{i}": te for i, te in enumerate(self.base.text_encoders)})
        for name, mod in mods.items():
            for phase in self.calls.values():
                phase[name] = 0
            mod.register_forward_pre_hook(lambda m, args, name=name: self._count(name))
        super()._prepare_caches()

    def _count(self, name: str) -> None:
        self.calls[self.phase][name] += 1

    def _loop(self) -> str:
        self.phase = "loop"
        try:
            return super()._loop()
        finally:
            self.phase = "after"
            self.calls["after"] = dict.fromkeys(self.calls["loop"], 0)


def _cfg(data: Path, **sets):
    # every image encoded up front: these tests count the encoder calls of set-up and loop apart
    # (encoding on first use: tests/test_first_use_cache.py)
    over = [f"dataset.path={data}", "dataset.cache_to_disk=true", "dataset.cache_on_first_use=false",
            "schedule.max_train_steps=4",
            "sampling.every_n_steps=0", "sampling.at_start=false", "dataset.batch_size=2"]
    return load_preset("tiny-test", over + [f"{k}={v}" for k, v in sets.items()])


def _train(cfg, run: Path) -> HookedTrainer:
    t = HookedTrainer(cfg, run, quiet=True)
    assert t.run() == EXIT_OK
    return t


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_cached_training_never_runs_vae_or_text_encoders_and_second_run_reuses_cache(tmp_path, family):
    data = make_dataset(tmp_path / "data", n=4)
    cfg = _cfg(data, **{"model.base": f"tiny:{family}"})

    first = _train(cfg, tmp_path / "run1")
    # the hooks see the encoders: every image and caption was encoded once, before the loop
    assert first.calls["setup"]["vae.encoder"] > 0
    assert all(first.calls["setup"][f"text_encoder{i}"] > 0 for i in range(len(first.base.text_encoders)))
    assert first.cache_stats["latents_computed"] == 4 and first.cache_stats["text_computed"] == 4
    # ...and never during the training steps
    assert sum(first.calls["loop"].values()) == 0, first.calls["loop"]
    assert first.progress.step == 4

    second = _train(cfg, tmp_path / "run2")
    assert sum(second.calls["setup"].values()) == 0, second.calls["setup"]
    assert sum(second.calls["loop"].values()) == 0, second.calls["loop"]
    assert second.dataset.encoder_calls == {"latents": 0, "text": 0}
    assert second.cache_stats == {"latents_computed": 0, "latents_reused": 4, "text_computed": 0, "text_reused": 4}
    assert any((data / ".atelier-cache" / "latents").glob("*.safetensors"))


def test_without_caching_the_hooks_count_encoder_calls_in_the_loop(tmp_path):
    """The control: the same hooks do see the VAE and text encoder when nothing is cached."""
    data = make_dataset(tmp_path / "data", n=4)
    t = _train(_cfg(data, **{"dataset.cache_latents": "false", "dataset.cache_text": "false"}), tmp_path / "run")
    assert t.calls["loop"]["vae.encoder"] == 4  # one batched encode per step
    assert t.calls["loop"]["text_encoder0"] == 4
    assert t.calls["loop"]["vae.decoder"] == 0
    assert sum(t.calls["setup"].values()) == 0


def test_text_encoder_training_keeps_latents_cached_but_runs_the_text_encoder(tmp_path):
    data = make_dataset(tmp_path / "data", n=4)
    t = _train(_cfg(data, **{"network.train_text_encoder": "true"}), tmp_path / "run")
    assert t.calls["loop"]["vae.encoder"] == 0
    assert t.calls["loop"]["text_encoder0"] == 4  # trained, so encoded every step
    assert t.cache_stats["latents_computed"] == 4 and t.cache_stats["text_computed"] == 0
