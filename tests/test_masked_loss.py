"""Masks and masked loss (issue #16): where a mask comes from, that it follows its image through resize, crop
and flip, that it is cached beside the latents and re-read when edited, and what the loss does with it, on a
real tiny UNet; a short real training run says masked loss is in use."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tests.helpers import events, make_dataset, run_trainer, write_config
from trainer.config import DatasetSection, NoiseSection
from trainer.data.cache import MASK_RECIPE, LatentCache, MaskCache, default_cache_dir
from trainer.data.dataset import TrainDataset
from trainer.data.images import ImageError
from trainer.data.masks import is_mask_file, mask_counts, mask_image_stem
from trainer.data.scan import doctor, list_dataset, scan_dataset
from trainer.models.tiny import build_tiny, tiny_vae
from trainer.train.loss import diffusion_loss

W, H = 96, 64  # not square: the image is scaled and cropped into an 80×48 bucket at resolution 64


def asymmetric_mask() -> np.ndarray:
    """White on the left third, grey along the top, black elsewhere: no flip or crop maps it onto itself."""
    m = np.zeros((H, W), np.uint8)
    m[:, :W // 3] = 255
    m[:H // 4, :] = 128
    return m


def dataset_cfg(**kw) -> DatasetSection:
    return DatasetSection(**{"resolution": 64, "bucket_step": 16, "batch_size": 2, "flip": True, **kw})


def make_masked_set(root: Path) -> Path:
    """sidecar.png + sidecar_mask.png (the image's red channel is the mask), alpha.png (opaque red where the
    alpha is the mask), plain.png without a mask."""
    root.mkdir(parents=True)
    m = asymmetric_mask()
    red = np.zeros((H, W, 3), np.uint8)
    red[..., 0] = m
    Image.fromarray(red).save(root / "sidecar.png")
    Image.fromarray(m).save(root / "sidecar_mask.png")
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, m
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(root / "plain.png")
    return root


def red_channel(ds: TrainDataset, i: int, flip: bool) -> np.ndarray:
    return (ds.pixels(i, flip)[0].numpy() + 1.0) * 127.5


def unet_prediction(seed: int = 0):
    """A real tiny SD1 UNet's prediction for a batch of 2 noisy latents, and a target of the same shape."""
    base = build_tiny("sd1")
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.tensor([10, 700])
    noisy = base.scheduler.add_noise(latents, noise, t)
    ctx = torch.randn(2, 77, base.unet.config.cross_attention_dim, generator=g)
    pred = base.unet(noisy, t, ctx).sample
    return base, pred, noise, t


# ---- (f) naming: a mask is never a training image ---------------------------------------------------------
def test_mask_sidecars_are_not_images_and_pair_with_their_image(tmp_path):
    root = make_masked_set(tmp_path / "set")
    Image.new("L", (40, 40), 255).save(root / "orphan_mask.png")
    Image.new("L", (32, 64), 255).save(root / "plain_mask.png")  # another shape than plain.png: refused
    assert mask_image_stem("Cat_MASK.PNG") == "Cat" and mask_image_stem("_mask.png") is None
    assert not is_mask_file("mask.png") and not is_mask_file("cat_mask.txt")

    scan = scan_dataset(root)
    items = {it.rel: it for it in scan.items}
    assert sorted(items) == ["alpha.png", "plain.png", "sidecar.png"]  # no *_mask.png among the images
    assert items["sidecar.png"].mask_file == "sidecar_mask.png" and not items["sidecar.png"].alpha_mask
    assert items["alpha.png"].alpha_mask and items["alpha.png"].mask_file is None
    assert items["plain.png"].mask_file is None  # its mask has another shape: reported, not used
    assert mask_counts(scan.items) == {"file": 1, "alpha": 1, "none": 1}
    problems = {p.file: p for p in scan.problems}
    assert "another shape" in problems["plain_mask.png"].reason and problems["plain_mask.png"].severity == "warning"
    assert "mask without an image" in problems["orphan_mask.png"].reason
    # the listing the studio shows (no pixels decoded) agrees on images and sidecars
    assert sorted(it.rel for it in list_dataset(root).items) == sorted(items)

    findings = [str(p) for p in doctor(scan, masked_loss=True)]
    assert any("2 of 3 image(s) have a mask (1 from _mask files, 1 from transparency); 1 without one" in f
               for f in findings), findings
    from ui.dataset_files import doctor_report, list_images

    assert sorted(p.name for p in list_images(root)) == sorted(items)  # the studio's gallery: no masks either
    assert "2 of 3 image(s) have a mask (1 from _mask files, 1 from transparency)" in doctor_report(root)


def test_doctor_warns_when_masked_loss_is_on_and_no_image_has_a_mask(tmp_path):
    scan = scan_dataset(make_dataset(tmp_path / "plain", n=2))
    assert any(p.severity == "warning" and "masked loss is on but no image has a mask" in p.reason
               for p in doctor(scan, masked_loss=True))
    assert not any("mask" in p.reason for p in doctor(scan, masked_loss=False))


def test_doctor_cli_counts_masks(tmp_path, capsys):
    import json

    from trainer.data.doctor_cli import main

    root = make_masked_set(tmp_path / "set")
    assert main([str(root), "--masked-loss", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 3 and out["masks"] == {"file": 1, "alpha": 1, "none": 1}
    assert main([str(make_dataset(tmp_path / "plain", n=2)), "--masked-loss"]) == 0
    text = capsys.readouterr().out
    assert "masks: 0 from _mask files, 0 from transparency, 2 none" in text
    assert "warning: (dataset): masked loss is on but no image has a mask" in text


# ---- (c) the mask follows its image ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sidecar.png", "alpha.png"])
def test_mask_is_cropped_and_flipped_with_its_image(tmp_path, name):
    root = make_masked_set(tmp_path / "set")
    # background black: alpha.png's red channel then comes out as its alpha, the mask
    ds = TrainDataset(scan_dataset(root, background="#000000"), dataset_cfg(background="#000000"), seed=3,
                      masked_loss=True)
    i = next(k for k, it in enumerate(ds.items) if it.rel == name)
    assert ds.masks.has(i) and ds.placements[i].bucket == (80, 48) and ds.placements[i].crop_top > 0
    for flip in (False, True):
        mask = np.asarray(ds.masks.pixels(i, flip), dtype=np.float32)
        assert mask.shape == (48, 80)
        assert np.abs(mask - red_channel(ds, i, flip)).max() <= 1.0, (name, flip)  # the same pixels, same place
    plain, flipped = ds.masks.tensor(i, False), ds.masks.tensor(i, True)
    assert plain.shape == (1, 48 // 8, 80 // 8)  # latent resolution (the default VAE factor 8)
    assert not torch.equal(plain, flipped) and torch.equal(flipped, plain.flip(-1))
    # area average: each latent pixel is the mean of its 8×8 block of the bucket-size mask
    full = np.asarray(ds.masks.pixels(i, False), dtype=np.float64) / 255.0
    blocks = full.reshape(6, 8, 10, 8).mean(axis=(1, 3))
    assert np.allclose(plain[0].numpy(), blocks, atol=1e-6)
    # white, grey and black areas all reach latent resolution
    assert (plain == 1.0).any() and (plain == 0.0).any() and ((plain > 0.3) & (plain < 0.7)).any()


def test_batches_carry_masks_and_unmasked_images_weigh_one(tmp_path):
    root = make_masked_set(tmp_path / "set")
    ds = TrainDataset(scan_dataset(root), dataset_cfg(enable_buckets=False, flip=False, batch_size=3), seed=3,
                      masked_loss=True)
    batch = ds.collate([ds.sample(i, 0) for i in range(3)])
    assert batch["masks"].shape == (3, 1, 8, 8)
    plain = [k for k, it in enumerate(ds.items) if it.rel == "plain.png"][0]
    assert torch.equal(batch["masks"][plain], torch.ones(1, 8, 8))
    # an all-white mask file comes out as exactly 1.0 everywhere, through resize, crop and the area average
    Image.new("L", (W, H), 255).save(root / "sidecar_mask.png")
    white = TrainDataset(scan_dataset(root), dataset_cfg(), seed=3, masked_loss=True)
    i = next(k for k, it in enumerate(white.items) if it.rel == "sidecar.png")
    assert torch.equal(white.masks.tensor(i, True), torch.ones(1, 6, 10))
    off = TrainDataset(scan_dataset(root), dataset_cfg(enable_buckets=False, flip=False, batch_size=3), seed=3)
    assert "masks" not in off.collate([off.sample(i, 0) for i in range(3)])  # masked loss off: no masks at all


# ---- (d) cached beside the latents, re-read when edited ------------------------------------------------------
def test_editing_a_mask_invalidates_its_cached_entry_only(tmp_path):
    root = make_masked_set(tmp_path / "set")
    torch.manual_seed(0)
    vae = tiny_vae().eval()
    calls = []

    def encode(pixels):
        calls.append(len(pixels))
        with torch.no_grad():
            return vae.encode(pixels).latent_dist.mean

    def run():
        ds = TrainDataset(scan_dataset(root), dataset_cfg(), seed=3, masked_loss=True)
        ds.masks.latent_factor = 2  # the tiny VAE halves once
        ds.attach_latent_cache(LatentCache(default_cache_dir(root), "tiny-vae"), encode)
        ds.attach_mask_cache(MaskCache(default_cache_dir(root), MASK_RECIPE))
        return ds, ds.precompute()

    ds, first = run()
    assert first["masks_computed"] == 4 and first["masks_reused"] == 0  # 2 masked images × 2 flips
    assert len(list((default_cache_dir(root) / "masks").glob("*.safetensors"))) == 4
    i = next(k for k, it in enumerate(ds.items) if it.rel == "sidecar.png")
    before = ds.encodings.mask_for(i, False, ds.masks.key(i, False))
    assert before.shape == (1, 24, 40)

    ds, second = run()  # a later run: everything from disk
    assert second["masks_computed"] == 0 and second["masks_reused"] == 4 and second["latents_computed"] == 0

    Image.fromarray(255 - asymmetric_mask()).save(root / "sidecar_mask.png")  # the user repaints the mask
    with pytest.raises(ImageError, match="changed since the dataset was scanned"):
        ds.masks.tensor(i, False)  # the running dataset never mixes an edited mask with its old hash
    n_calls = len(calls)
    ds, third = run()
    assert third["masks_computed"] == 2 and third["masks_reused"] == 2  # the edited mask's two flips only
    assert third["latents_computed"] == 0 and len(calls) == n_calls  # the image did not change: no VAE run
    after = ds.encodings.mask_for(i, False, ds.masks.key(i, False))
    assert torch.allclose(after, 1.0 - before, atol=2 / 255)  # the inverted mask (up to resampling's rounding)
    assert (after - before).abs().max() > 0.9


# ---- (a), (b) the loss on a real UNet's output ----------------------------------------------------------------
def test_all_white_mask_gives_the_plain_loss_bit_for_bit():
    base, pred, target, t = unet_prediction()
    weights = torch.tensor([1.0, 0.5])
    for noise_kw in ({}, {"min_snr_gamma": 0.0}, {"unmasked_weight": 0.3}, {"unmasked_weight": 1.0}):
        plain = diffusion_loss(pred, target, t, base.scheduler, NoiseSection(**noise_kw), False, weights)
        masked_cfg = NoiseSection(masked_loss=True, **noise_kw)
        ones = torch.ones(2, 1, 16, 16)
        assert torch.equal(diffusion_loss(pred, target, t, base.scheduler, masked_cfg, False, weights, masks=ones),
                           plain), noise_kw
        # masked loss on but no image in the batch has a mask: the plain loss
        assert torch.equal(diffusion_loss(pred, target, t, base.scheduler, masked_cfg, False, weights), plain)
        # a mask given with masked loss off changes nothing
        half = torch.zeros(2, 1, 16, 16)
        assert torch.equal(diffusion_loss(pred, target, t, base.scheduler, NoiseSection(**noise_kw), False, weights,
                                          masks=half), plain)


def test_half_mask_gives_no_gradient_from_the_masked_out_half():
    base, pred, target, t = unet_prediction(seed=1)
    pred.retain_grad()
    masks = torch.zeros(2, 1, 16, 16)
    masks[..., :8] = 1.0  # left half trained, right half ignored
    loss = diffusion_loss(pred, target, t, base.scheduler, NoiseSection(masked_loss=True), False,
                          torch.ones(2), masks=masks)
    loss.backward()
    g = pred.grad
    assert torch.count_nonzero(g[..., 8:]) == 0  # the UNet's output there has no effect on the loss
    assert torch.count_nonzero(g[..., :8]) == g[..., :8].numel()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in base.unet.parameters())

    # unmasked_weight 0.25: the masked-out half counts a quarter, per pixel, against the same error
    pred2 = pred.detach().requires_grad_(True)
    diffusion_loss(pred2, target, t, base.scheduler, NoiseSection(masked_loss=True, unmasked_weight=0.25), False,
                   torch.ones(2), masks=masks).backward()
    err = (pred2.detach() - target)
    ratio_left, ratio_right = pred2.grad[..., :8] / err[..., :8], pred2.grad[..., 8:] / err[..., 8:]
    assert torch.allclose(ratio_right, 0.25 * ratio_left.mean(dim=(1, 2, 3), keepdim=True), rtol=1e-4)


def test_loss_is_normalised_per_sample_by_the_mask_area():
    base, pred, target, t = unet_prediction(seed=2)
    pred = pred.detach()
    masks = torch.zeros(2, 1, 16, 16)
    masks[..., :4] = 1.0  # a quarter of each sample
    cfg = NoiseSection(masked_loss=True, min_snr_gamma=0.0)
    got = diffusion_loss(pred, target, t, base.scheduler, cfg, False, torch.ones(2), masks=masks)
    want = ((pred[..., :4] - target[..., :4]) ** 2).mean(dim=(1, 2, 3)).mean()  # the MSE of the trained area
    assert torch.allclose(got, want, rtol=1e-5)
    with pytest.raises(ValueError, match="do not fit the prediction"):
        diffusion_loss(pred, target, t, base.scheduler, cfg, False, torch.ones(2), masks=torch.ones(2, 1, 8, 8))
    # an all-black mask with unmasked_weight 0 teaches nothing, and is no NaN
    black = diffusion_loss(pred, target, t, base.scheduler, cfg, False, torch.ones(2), masks=torch.zeros(2, 1, 16, 16))
    assert black.item() == 0.0


# ---- (e) a real run says so ------------------------------------------------------------------------------------
def test_training_with_masked_loss_reports_it_in_events_and_metadata(tmp_path):
    data = make_dataset(tmp_path / "data", n=3)
    m = np.zeros((64, 64), np.uint8)
    m[:, :40] = 255
    Image.fromarray(m).save(data / "img00_mask.png")
    rgba = np.asarray(Image.open(data / "img01.png").convert("RGBA")).copy()
    rgba[:32, :, 3] = 0  # transparent top half: an alpha mask
    Image.fromarray(rgba, "RGBA").save(data / "img01.png")
    cfg = write_config(tmp_path / "run", **{"dataset.path": str(data), "schedule.max_train_steps": 2,
                                            "noise.masked_loss": "true", "noise.unmasked_weight": 0.1,
                                            "dataset.cache_to_disk": "true", "sampling.prompts": [],
                                            "sampling.at_start": "false"})
    r = run_trainer("train", str(cfg), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    ev = events(tmp_path / "run")
    started = next(e for e in ev if e["type"] == "started")
    assert started["images"] == 3 and started["masked_loss"] is True and started["masked_images"] == 2
    assert [e["step"] for e in ev if e["type"] == "step"] == [1, 2]
    assert len(list((data / ".atelier-cache" / "masks").glob("*.safetensors"))) == 2  # beside the latents
    adapter = tmp_path / "run" / "output" / "tiny-test.safetensors"
    with safe_open(str(adapter), "pt") as f:
        meta = f.metadata()
    assert meta["ss_masked_loss"] == "True" and meta["ss_unmasked_weight"] == "0.1"
    assert meta["ss_atelier_masked_images"] == "2"
