"""Caching on first use (dataset.cache_on_first_use) and the frozen parts leaving memory: the real Trainer on
the tiny SD1 model. A step encodes only the images (and captions) its batch meets for the first time, the
second epoch reads the cache, the adapter is the one up-front caching trains, and once the caches are full
the VAE and the untrained text encoder are freed (previews off) or kept for previews that still render."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.helpers import make_dataset
from trainer.config import load_preset
from trainer.train.checkpoints import trainable_state
from trainer.train.frozen import FrozenParts
from trainer.train.loop import EXIT_OK, Trainer


class _WatchedTrainer(Trainer):
    """The real Trainer; notes which frozen modules hold weights when step 1 begins."""

    def train_step(self, batches):
        if self.progress.step == 0:
            self.at_step1 = {"text_encoder": _on_meta(self.base.text_encoders[0]),
                             "vae.decoder": _on_meta(self.base.vae.decoder),
                             "vae.encoder": _on_meta(self.base.vae.encoder)}
        return super().train_step(batches)


def _train(data: Path, run: Path, prompts: tuple[str, ...] = (), **sets) -> Trainer:
    """A tiny run; previews only with `prompts` (then once, at the end)."""
    over = {"dataset.path": data, "schedule.max_train_steps": 3, "dataset.batch_size": 2,
            "sampling.every_n_steps": 0, "sampling.at_start": "false", **sets}
    cfg = load_preset("tiny-test", [f"{k}={v}" for k, v in over.items()])
    cfg.sampling.prompts = list(prompts)
    t = _WatchedTrainer(cfg, run, quiet=True)
    assert t.run() == EXIT_OK
    return t


def _events(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]


def _on_meta(module: torch.nn.Module) -> bool:
    return all(t.is_meta for t in [*module.parameters(), *module.buffers()])


def test_first_use_encodes_each_batch_once_reads_the_cache_after_and_trains_what_up_front_caching_trains(tmp_path):
    data = make_dataset(tmp_path / "data", n=4)
    t = _train(data, tmp_path / "run")  # 4 images, batches of 2: 2 steps an epoch; step 3 is the 2nd epoch's
    # the captions before step 1 (cheap, and the text encoder can go), the latents on first use
    assert t.cache_stats == {"latents_reused": 0, "latents_pending": 4, "text_computed": 4, "text_reused": 0}
    # one VAE call per batch of the first epoch (both latents at once), none in the second: it read the cache
    assert t.dataset.encoder_calls == {"latents": 2, "text": 2}
    cache = t.dataset.encodings.latent_cache
    assert cache.stats["computed"] == 4 and cache.stats["memory_hits"] >= 2
    ev = _events(tmp_path / "run")
    steps = [e for e in ev if e["type"] == "step"]
    assert [e.get("to_encode") for e in steps] == [2, None, None]  # 2 latents left after step 1
    # no previews: with the captions cached, the text encoder and the VAE's decoder are freed before step 1;
    # the VAE's encoder works through the first epoch
    assert t.at_step1 == {"text_encoder": True, "vae.decoder": True, "vae.encoder": False}
    # no previews and the text encoder not trained: both frozen parts are gone once the first epoch cached them
    assert t.frozen.state == "freed" and set(t.frozen.parts) == {"vae", "text_encoder0"}
    assert _on_meta(t.base.vae) and _on_meta(t.base.text_encoders[0])
    assert not _on_meta(t.base.unet)
    # the peak memory of each phase, in events and in the finished event
    assert {"model load", "caching", "training"} <= {e["phase"] for e in ev if e["type"] == "memory"}
    assert ev[-1]["type"] == "finished" and ev[-1]["memory"]["training"]["peak_rss_mib"] > 0

    eager = _train(data, tmp_path / "eager", **{"dataset.cache_on_first_use": "false"})
    assert eager.dataset.encoder_calls == {"latents": 2, "text": 2} and eager.frozen.state == "freed"
    a, b = trainable_state(t.base), trainable_state(eager.base)
    assert a.keys() == b.keys() and a
    for k in a:  # the same seed: the same adapter (the VAE's mean is deterministic; only batching differs)
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_the_first_epochs_leftovers_are_encoded_and_previews_render_after_the_release(tmp_path):
    """Flip on: the first epoch asks for one of each image's two latents; the others are encoded once it is
    over, then the VAE is released. Previews are on, so it is kept (on the CPU: where it already is), and
    the final round still draws. The trained text encoder runs every step: it is not idle at all."""
    data = make_dataset(tmp_path / "data", n=2)
    t = _train(data, tmp_path / "run", prompts=("a photo of a sks cat",),
               **{"network.train_text_encoder": "true", "dataset.flip": "true", "sampling.steps": 2})
    assert t.cache_stats["latents_pending"] == 4 and t.dataset.pending_encodings == 0
    assert set(t.frozen.parts) == {"vae"} and t.frozen.state == "offloaded"
    assert t.at_step1 == {"text_encoder": False, "vae.decoder": False, "vae.encoder": False}  # previews need them
    assert not _on_meta(t.base.vae) and not _on_meta(t.base.text_encoders[0])
    ev = _events(tmp_path / "run")
    leftovers = [e for e in ev if e["type"] == "phase" and e["phase"] == "caching"]
    step2 = next(e for e in ev if e["type"] == "step" and e["step"] == 2)
    assert leftovers and leftovers[-1]["done"] == leftovers[-1]["total"] == 2 and leftovers[0]["seq"] > step2["seq"]
    samples = [e for e in ev if e["type"] == "sample"]
    assert samples and (tmp_path / "run" / samples[0]["path"]).stat().st_size > 0
    assert any(e["type"] == "memory" and e["phase"] == "previews" for e in ev)


def test_frozen_parts_are_freed_once_and_kept_parts_come_back_for_a_round():
    kept, gone = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    parts = FrozenParts({"vae": kept}, "cpu", keep=True)
    parts.release()
    with parts.on_device():
        assert kept(torch.ones(1, 4)).shape == (1, 4)
    assert parts.state == "offloaded" and not _on_meta(kept)
    freed = FrozenParts({"vae": gone}, "cpu", keep=False)
    freed.release()
    freed.release()  # once: a second call changes nothing
    assert freed.state == "freed" and _on_meta(gone)
