"""Latent and text-embedding caches with a real (tiny) VAE and CLIP text encoder: encode once, reuse on the
next run, invalidate only what changed, never trust a torn file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.config import DatasetSection
from trainer.data.cache import LatentCache, TextCache, default_cache_dir, fingerprint_module
from trainer.data.dataset import TrainDataset
from trainer.data.scan import scan_dataset
from trainer.formats.safetensors_io import read_header
from trainer.models.tiny import build_tiny, tiny_vae


class Counting:
    """Wraps a real encoder; counts calls and items so a test can see whether it ran."""

    def __init__(self, fn):
        self.fn, self.calls, self.items = fn, 0, 0

    def __call__(self, x):
        self.calls += 1
        self.items += len(x)
        return self.fn(x)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return tiny_vae().eval()


def vae_encoder(vae):
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vae.encode(pixels).latent_dist.mean * 0.18215
    return Counting(encode)


def make_set(root: Path, n: int = 5) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    sizes = [(96, 64), (64, 96), (80, 80), (120, 60), (64, 64)]
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"p{i}.png")
        (root / f"p{i}.txt").write_text(f"zkq, thing {i}", encoding="utf-8")
    return root


def cfg(**kw) -> DatasetSection:
    base = dict(resolution=64, bucket_step=16, batch_size=2, flip=True)
    base.update(kw)
    return DatasetSection(**base)


def run(root: Path, vae, encoder_id: str, c: DatasetSection | None = None):
    """What a training run does: scan, build, attach, precompute, then read every batch of an epoch."""
    ds = TrainDataset(scan_dataset(root), c or cfg(), seed=11)
    enc = vae_encoder(vae)
    cache = LatentCache(default_cache_dir(root), encoder_id)
    ds.attach_latent_cache(cache, enc)
    progress = []
    stats = ds.precompute(lambda done, total: progress.append((done, total)))
    calls_after_precompute = enc.calls
    batches = [ds.collate([ds.sample(i, 0) for i in b]) for b in ds.epoch_batches(0)]
    assert enc.calls == calls_after_precompute, "sample() ran the encoder after precompute"
    return ds, enc, cache, stats, progress, batches


def test_second_run_encodes_nothing_and_gets_the_same_latents(tmp_path, vae):
    root = make_set(tmp_path / "set")
    vid = "tiny-vae:" + fingerprint_module(vae, "0.18215")
    ds, enc, cache, stats, progress, batches = run(root, vae, vid)
    n_entries = 5 * 2  # every image, flipped and not
    assert stats["latents_computed"] == n_entries and enc.items == n_entries and cache.stats["computed"] == n_entries
    assert progress[0] == (0, n_entries) and progress[-1] == (n_entries, n_entries)
    for b in batches:
        assert "latents" in b and "pixels" not in b
        assert b["latents"].shape[1] == 4
    # a cached latent is the encoding of exactly the pixels its key names
    s = ds.sample(3, 0)
    direct = vae.encode(ds.pixels(s["item"], s["flip"])[None]).latent_dist.mean[0] * 0.18215
    assert torch.allclose(s["latents"], direct, atol=1e-5)
    files = sorted((default_cache_dir(root) / "latents").glob("*.safetensors"))
    assert len(files) == n_entries
    assert read_header(files[0]).metadata["encoder_id"] == vid  # plain safetensors, no pickle

    ds2, enc2, cache2, stats2, _, batches2 = run(root, vae, vid)
    assert enc2.calls == 0 and stats2 == {"latents_computed": 0, "latents_reused": n_entries,
                                          "text_computed": 0, "text_reused": 0}
    assert cache2.stats["disk_hits"] == n_entries and cache2.stats["computed"] == 0
    for a, b in zip(batches, batches2):
        assert torch.equal(a["latents"], b["latents"]) and a["captions"] == b["captions"]
    # the cache folder is not part of the dataset, and not worth a note
    assert not any(".atelier-cache" in p.file for p in scan_dataset(root).problems)


def test_a_changed_image_invalidates_only_its_own_entries(tmp_path, vae):
    root = make_set(tmp_path / "set")
    run(root, vae, "v1")
    Image.new("RGB", (96, 64), (200, 30, 30)).save(root / "p0.png")  # same size, other picture
    (root / "p1.txt").write_text("a new caption", encoding="utf-8")  # captions do not touch latents
    _, enc, _, stats, _, _ = run(root, vae, "v1")
    assert stats["latents_computed"] == 2 and enc.items == 2  # p0, flipped and not
    _, enc, _, stats, _, _ = run(root, vae, "v1", cfg(resolution=96))  # another resolution: other buckets
    assert stats["latents_computed"] == 10
    _, enc, _, stats, _, _ = run(root, vae, "v2")  # another encoder: nothing reusable
    assert stats["latents_computed"] == 10
    _, enc, _, stats, _, _ = run(root, vae, "v1")  # the first entries are still there
    assert stats["latents_computed"] == 0


def test_a_torn_cache_file_is_recomputed(tmp_path, vae):
    root = make_set(tmp_path / "set", n=2)
    run(root, vae, "v1")
    victim = sorted((default_cache_dir(root) / "latents").glob("*.safetensors"))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    _, enc, cache, stats, _, _ = run(root, vae, "v1")
    assert stats["latents_computed"] == 1 and cache.stats["corrupt"] == 1
    assert read_header(victim).tensors["latents"]["shape"][0] == 4


def test_memory_only_cache(tmp_path, vae):
    root = make_set(tmp_path / "set", n=2)
    ds = TrainDataset(scan_dataset(root), cfg(flip=False), seed=0)
    enc = vae_encoder(vae)
    ds.attach_latent_cache(LatentCache(None, "v1"), enc)
    # without precompute, a sample encodes lazily, once
    first = ds.sample(0, 0)["latents"]
    assert enc.calls == 1
    assert torch.equal(ds.sample(0, 0)["latents"], first) and enc.calls == 1
    assert ds.precompute()["latents_computed"] == 1
    assert not default_cache_dir(root).exists()


@pytest.fixture(scope="module")
def text_encoder():
    base = build_tiny("sd1")
    te, tok = base.text_encoders[0].eval(), base.tokenizers[0]

    def encode(captions: list[str]) -> dict[str, torch.Tensor]:
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            return {"hidden": te(ids).last_hidden_state}
    return encode, fingerprint_module(te)


def test_text_cache_per_caption(tmp_path, vae, text_encoder):
    encode, te_id = text_encoder
    root = make_set(tmp_path / "set", n=3)

    def attach(c):
        ds = TrainDataset(scan_dataset(root), c, seed=0)
        counting = Counting(encode)
        ds.attach_text_cache(TextCache(default_cache_dir(root), "te:" + te_id), counting)
        return ds, counting

    c = cfg(caption_dropout=0.3)
    ds, counting = attach(c)
    stats = ds.precompute()
    assert stats["text_computed"] == 4  # three captions and the dropped ""
    batch = ds.collate([ds.sample(i, 0) for i in ds.epoch_batches(0)[0]])
    assert batch["text"]["hidden"].shape[:2] == (len(batch["captions"]), 77)
    for j, cap in enumerate(batch["captions"]):
        assert torch.allclose(batch["text"]["hidden"][j], encode([cap])["hidden"][0], atol=1e-6)
    calls = counting.calls
    for e in range(3):
        for i in range(len(ds)):
            ds.sample(i, e)
    assert counting.calls == calls

    (root / "p2.txt").write_text("zkq, edited", encoding="utf-8")
    ds, counting = attach(c)
    stats = ds.precompute()
    assert stats["text_computed"] == 1 and stats["text_reused"] == 3 and counting.items == 1

    with pytest.raises(ValueError, match="shuffle_caption"):
        TrainDataset(scan_dataset(root), cfg(shuffle_caption=True), seed=0).attach_text_cache(
            TextCache(None, "te"), encode)
