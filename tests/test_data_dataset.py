"""TrainDataset: deterministic epochs and samples, buckets never mixed, repeats and regularisation."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.config import DatasetSection
from trainer.data.dataset import TrainDataset
from trainer.data.images import ImageError
from trainer.data.scan import scan_dataset

SIZES = [(160, 96), (96, 160), (128, 128), (200, 100), (100, 100), (90, 150), (150, 90), (120, 120)]


def make_set(root: Path, n: int = 8, sub: str | None = "2_obj", tag: str = "zkq") -> Path:
    rng = np.random.default_rng(len(str(root)))
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        folder = root / sub if (sub and i % 2) else root
        folder.mkdir(exist_ok=True)
        w, h = SIZES[i % len(SIZES)]
        a = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        a[:, : w // 4] = (255, 0, 0)  # a red left edge: a flip is visible
        Image.fromarray(a).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"{tag}, shape {i}, colour {i % 3}, extra {i}", encoding="utf-8")
    return root


def cfg(**kw) -> DatasetSection:
    base = dict(resolution=128, bucket_step=32, batch_size=3, max_aspect=2.0)
    base.update(kw)
    return DatasetSection(**base)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp("ds") / "train")


@pytest.fixture(scope="module")
def reg_root(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp("reg") / "reg", n=3, sub=None, tag="a shape")


def test_epoch_batches_are_deterministic_and_never_mix_buckets(data_root):
    scan = scan_dataset(data_root)
    a = TrainDataset(scan, cfg(), seed=7)
    b = TrainDataset(scan_dataset(data_root), cfg(), seed=7)
    for epoch in range(3):
        assert a.epoch_batches(epoch) == b.epoch_batches(epoch)
    assert a.epoch_batches(0) != a.epoch_batches(1)
    assert TrainDataset(scan, cfg(), seed=8).epoch_batches(0) != a.epoch_batches(0)
    used_buckets = set()
    for batch in a.epoch_batches(0):
        buckets = {a.placements[a.item_index(i, 0)].bucket for i in batch}
        assert len(buckets) == 1, batch
        used_buckets |= buckets
        assert 1 <= len(batch) <= 3
    assert len(used_buckets) >= 3  # the set really spans several buckets


def test_repeats_are_counted(data_root):
    scan = scan_dataset(data_root)
    ds = TrainDataset(scan, cfg(), seed=1)
    assert scan.folders["2_obj"] == {"n_repeats": 2, "img_count": 4}
    assert scan.folders["train"] == {"n_repeats": 1, "img_count": 4}
    flat = [i for b in ds.epoch_batches(0) for i in b]
    assert sorted(flat) == list(range(len(ds))) and len(ds) == 4 * 2 + 4 * 1
    per_image = Counter(ds.items[ds.item_index(i, 0)].rel for i in flat)
    for it in ds.items:
        assert per_image[it.rel] == it.repeats
    info = ds.bucket_info
    assert sum(b["count"] for b in info["buckets"].values()) == 12
    assert ds.num_images == 8
    assert ds.tag_frequency["2_obj"]["zkq"] == 4


def test_sample_is_reproducible_and_flip_is_real(data_root):
    c = cfg(flip=True, shuffle_caption=True, keep_tokens=1)
    a = TrainDataset(scan_dataset(data_root), c, seed=3)
    b = TrainDataset(scan_dataset(data_root), c, seed=3)  # a "resumed" run: a fresh object
    flips = set()
    for epoch in (0, 5):
        for i in range(len(a)):
            sa, sb = a.sample(i, epoch), b.sample(i, epoch)
            assert torch.equal(sa["pixels"], sb["pixels"])
            assert sa["caption"] == sb["caption"] and sa["key"] == sb["key"] and sa["flip"] == sb["flip"]
            assert sa["caption"].startswith("zkq, ")
            px = sa["pixels"]
            bw, bh = sa["bucket"]
            assert px.shape == (3, bh, bw) and px.dtype == torch.float32
            assert px.min() >= -1 and px.max() <= 1
            unflipped = a.pixels(sa["item"], False)
            assert torch.equal(px, unflipped.flip(-1) if sa["flip"] else unflipped)
            flips.add(sa["flip"])
    assert flips == {True, False}
    # captions vary across epochs (shuffle), are the same tags
    caps = {a.sample(0, e)["caption"] for e in range(12)}
    assert len(caps) > 1 and all(sorted(x.split(", ")) == sorted(next(iter(caps)).split(", ")) for x in caps)


def test_collate_shapes_and_flags(data_root):
    ds = TrainDataset(scan_dataset(data_root), cfg(), seed=0)
    batch_idx = max(ds.epoch_batches(0), key=len)
    batch = ds.collate([ds.sample(i, 0) for i in batch_idx])
    n = len(batch_idx)
    assert batch["pixels"].shape[0] == n and batch["pixels"].dim() == 4
    assert batch["is_reg"].dtype == torch.bool and not batch["is_reg"].any()
    assert len(batch["captions"]) == n and batch["loss_weights"].tolist() == [1.0] * n
    h, w = batch["pixels"].shape[-2:]
    assert batch["target_sizes"].tolist() == [[h, w]] * n
    other = next(b for b in ds.epoch_batches(0) if ds.sample(b[0], 0)["bucket"] != ds.sample(batch_idx[0], 0)["bucket"])
    with pytest.raises(ValueError, match="mixes buckets"):
        ds.collate([ds.sample(batch_idx[0], 0), ds.sample(other[0], 0)])


def test_regularisation_images_are_mixed_in(data_root, reg_root):
    c = cfg(prior_loss_weight=0.5)
    scan, reg = scan_dataset(data_root), scan_dataset(reg_root, is_reg=True)
    ds = TrainDataset(scan, c, seed=2, reg_scan=reg)
    assert len(ds) == 24  # 12 training samples + as many regularisation samples
    seen_reg = Counter()
    for epoch in range(2):
        flags = [ds.sample(i, epoch)["is_reg"] for b in ds.epoch_batches(epoch) for i in b]
        assert flags.count(True) == 12 and flags.count(False) == 12
        for b in ds.epoch_batches(epoch):
            batch = ds.collate([ds.sample(i, epoch) for i in b])
            assert torch.equal(batch["loss_weights"][batch["is_reg"]],
                               torch.full((int(batch["is_reg"].sum()),), 0.5))
            seen_reg.update(ds.items[ds.item_index(i, epoch)].rel for i in b if ds.items[ds.item_index(i, epoch)].is_reg)
    assert set(seen_reg) == {it.rel for it in reg.items}
    assert ds.num_reg_images == 3 and ds.reg_folders == {"reg": {"n_repeats": 1, "img_count": 3}}
    # a regularisation scan passed without is_reg is still treated as regularisation
    ds2 = TrainDataset(scan, c, seed=2, reg_scan=scan_dataset(reg_root))
    assert sum(ds2.sample(i, 0)["is_reg"] for i in range(len(ds2))) == 12


def test_changed_file_is_refused_not_silently_used(tmp_path):
    root = make_set(tmp_path / "d", n=2, sub=None)
    ds = TrainDataset(scan_dataset(root), cfg(), seed=0)
    Image.new("RGB", (50, 50)).save(root / "img0.png")
    i = next(i for i in range(len(ds)) if ds.items[ds.item_index(i, 0)].rel == "img0.png")
    with pytest.raises(ImageError, match="img0.png: the file changed"):
        ds.sample(i, 0)


def test_caption_dropout_is_seeded(data_root):
    c = cfg(caption_dropout=0.5)
    ds = TrainDataset(scan_dataset(data_root), c, seed=4)
    caps = [ds.caption_for(i, e) for e in range(4) for i in range(len(ds))]
    assert 0.25 < caps.count("") / len(caps) < 0.75
    assert caps == [TrainDataset(scan_dataset(data_root), c, seed=4).caption_for(i, e)
                    for e in range(4) for i in range(len(ds))]


def test_caption_extension_precedence_and_nested_repeat_folders(tmp_path):
    root = tmp_path / "d"
    (root / "10_char" / "closeups").mkdir(parents=True)
    for rel in ("a.png", "10_char/b.png", "10_char/closeups/c.png"):
        Image.new("RGB", (64, 64), (10, 20, 30)).save(root / rel)
    (root / "a.txt").write_text("from txt", encoding="utf-8")
    (root / "a.caption").write_text("from caption", encoding="utf-8")
    (root / "10_char" / "closeups" / "c.txt").write_text("closeup", encoding="utf-8")
    by = {it.rel: it for it in scan_dataset(root, "caption", 2).items}
    assert by["a.png"].caption == "from caption" and by["a.png"].repeats == 2
    assert {it.rel: it.caption for it in scan_dataset(root, ".txt").items}["a.png"] == "from txt"
    assert by["10_char/closeups/c.png"].folder == "10_char" and by["10_char/closeups/c.png"].repeats == 10
    assert by["10_char/closeups/c.png"].caption == "closeup"
    assert scan_dataset(root).folders["10_char"] == {"n_repeats": 10, "img_count": 2}
