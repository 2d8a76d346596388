"""Crop box and focus point per image (issue #16): the `<stem>.crop.json` reader, placement around the focus point,
the box cut before bucketing (pixels, mask and SDXL conditioning alike), cache keys, and a short real run."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import events, make_dataset, run_in_process, write_config
from trainer.config import DatasetSection
from trainer.data.buckets import Buckets
from trainer.data.cache import stable_key
from trainer.data.crops import Crop, CropError, crop_file_name, crop_image_stem, crop_json, parse_crop, read_crop
from trainer.data.dataset import TrainDataset
from trainer.data.scan import doctor, list_dataset, scan_dataset


def cfg(**kw) -> DatasetSection:
    return DatasetSection(**{"resolution": 64, "bucket_step": 16, "batch_size": 1, "flip": False, **kw})


def gradient_image(path, w=192, h=64):
    """Red rises left to right, green top to bottom: every pixel says where it came from."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).round().astype(np.uint8)).save(path)


# ---- the reader ----------------------------------------------------------------------------------------------
def test_crop_sidecar_names():
    assert crop_image_stem("cat.crop.json") == "cat" and crop_image_stem("Cat.CROP.JSON") == "Cat"
    assert crop_image_stem(".crop.json") is None and crop_image_stem("cat.json") is None
    assert crop_file_name("a.b.png") == "a.b.crop.json"


@pytest.mark.parametrize("text,reason", [
    ('{"box": [0.1, 0.2, 0.1, 0.9]}', "x1 must exceed x0"),
    ('{"box": [0.1, 0.8, 0.9, 0.2]}', "y1 must exceed y0"),
    ('{"box": [0, 0, 1.5, 1]}', "1.5 is out of range"),
    ('{"box": [0, 0, 1]}', "list of 4 numbers"),
    ('{"focus": [0.5, "x"]}', "list of 2 numbers"),
    ('{"focus": [-0.1, 0.5]}', "-0.1 is out of range"),
    ('{"box": [0, 0, 0.5, 0.5], "focus": [0.9, 0.9]}', "lies outside the box"),
    ('{"box": [0, 0, 1, 1], "zoom": 2}', "unknown key(s) zoom"),
    ('{}', 'no "box" and no "focus"'),
    ('[0, 0, 1, 1]', "not a crop"),
    ('{"box": [0, 0, 1, 1]', "not JSON"),
])
def test_bad_crop_files_are_refused_with_the_reason(tmp_path, text, reason):
    path = tmp_path / "a.crop.json"
    path.write_text(text)
    with pytest.raises(CropError) as e:
        read_crop(path)
    assert reason in e.value.reason and str(e.value).startswith("a.crop.json: ")


def test_good_crop_files_round_trip(tmp_path):
    crop = parse_crop(tmp_path / "a.crop.json", b'{"box": [0, 0.25, 1, 0.75], "focus": [0.5, 0.5]}')
    assert crop == Crop(box=(0.0, 0.25, 1.0, 0.75), focus=(0.5, 0.5))
    assert parse_crop(tmp_path / "b.crop.json", crop_json(crop).encode()) == crop
    assert parse_crop(tmp_path / "c.crop.json", b'{"focus": [0, 1]}') == Crop(focus=(0.0, 1.0))


# ---- placement ------------------------------------------------------------------------------------------------
def old_place(b: Buckets, w: int, h: int):
    """The placement before crop files existed (centre crop), written out: what an image without one must keep."""
    bw, bh = b.assign(w, h)
    s = max(bw / w, bh / h)
    rw, rh = max(bw, round(w * s)), max(bh, round(h * s))
    return (bw, bh), (rw, rh), (rw - bw) // 2, (rh - bh) // 2


@pytest.mark.parametrize("res,step,enabled", [(512, 64, True), (64, 16, True), (500, 64, False)])
def test_without_a_crop_file_placement_is_unchanged(res, step, enabled):
    b = Buckets(res, step, 2.0, enabled)
    for w, h in [(1000, 1000), (1600, 900), (900, 1600), (333, 777), (97, 61), (3000, 1001), (64, 64)]:
        p = b.place(w, h)
        assert (p.bucket, p.resized, p.crop_left, p.crop_top) == old_place(b, w, h)
        assert p.original == (w, h) and p.box is None
        assert b.place(w, h, focus=(0.5, 0.5)) == p  # the centre as focus point: today's centre crop


def test_focus_point_moves_the_crop_as_far_as_the_picture_allows():
    b = Buckets(512, 64, 2.0)
    centre = b.place(1000, 1000)  # square bucket, nothing to crop
    assert b.place(1000, 1000, focus=(0.0, 1.0)) == centre
    wide = b.place(3000, 1000)  # beyond the widest bucket: cropped left and right
    room = wide.resized[0] - wide.bucket[0]
    assert room > 0 and wide.crop_left == room // 2
    assert b.place(3000, 1000, focus=(0.0, 0.5)).crop_left == 0
    assert b.place(3000, 1000, focus=(1.0, 0.5)).crop_left == room
    assert b.place(3000, 1000, focus=(0.9, 0.5)).crop_left == room  # clamped to the resized image
    inside = b.place(3000, 1000, focus=(0.4, 0.5))
    centre_x = (0.4 * wide.resized[0]) - inside.crop_left  # the focus point sits in the middle of the bucket
    assert 0 < inside.crop_left < room and abs(centre_x - wide.bucket[0] / 2) <= 1


def test_box_is_cut_first_then_bucketed_and_the_focus_is_kept_in_view(tmp_path):
    gradient_image(tmp_path / "g.png", 192, 64)
    img = Image.open(tmp_path / "g.png").convert("RGB")
    b = Buckets(64, 16, 2.0)
    whole, _ = b.apply(img)
    # the left square third of a 3:1 picture: a square bucket, red only from the left third
    out, p = b.apply(img, box=(0.0, 0.0, 1 / 3, 1.0))
    assert p.box == (0, 0, 64, 64) and p.original == (64, 64) and p.bucket == out.size == (64, 64)
    assert whole.size != out.size
    assert np.asarray(out)[:, :, 0].max() <= 255 / 3 + 2
    # a focus point at the right edge: the window slides right
    left, pl = b.apply(img, focus=(0.0, 0.5))
    right, pr = b.apply(img, focus=(1.0, 0.5))
    assert pl.crop_left == 0 and pr.crop_left == pr.resized[0] - pr.bucket[0] > 0
    assert np.asarray(left)[:, :, 0].mean() < np.asarray(whole)[:, :, 0].mean() < np.asarray(right)[:, :, 0].mean()


# ---- the scan, the dataset, cache keys and the mask ----------------------------------------------------------
def test_scan_reads_crop_files_and_reports_bad_ones(tmp_path):
    root = make_dataset(tmp_path / "set", n=4)
    (root / "img00.crop.json").write_text('{"box": [0.25, 0, 0.75, 1]}')
    (root / "img01.crop.json").write_text('{"focus": [0.1, 0.9]}')
    (root / "img02.crop.json").write_text('{"box": [0.5, 0, 0.2, 1]}')  # x1 < x0
    (root / "gone.crop.json").write_text('{"focus": [0.5, 0.5]}')
    scan = scan_dataset(root)
    by = {it.rel: it for it in scan.items}
    assert sorted(by) == ["img00.png", "img01.png", "img02.png", "img03.png"]  # a crop file is no image
    assert by["img00.png"].crop_box == (0.25, 0.0, 0.75, 1.0) and by["img00.png"].focus is None
    assert by["img01.png"].focus == (0.1, 0.9) and by["img01.png"].crop_box is None
    assert by["img02.png"].crop_box is None and by["img02.png"].crop_file is None  # trains uncropped
    problems = {p.file: p for p in scan.problems}
    assert problems["img02.crop.json"].severity == "warning"
    assert "x1 must exceed x0" in problems["img02.crop.json"].reason
    assert "img02.png is trained uncropped" in problems["img02.crop.json"].reason
    assert "crop file without an image" in problems["gone.crop.json"].reason
    assert not any("ignored" in p.reason and ".json" in p.reason and p.file != "gone.crop.json"
                   for p in scan.problems)  # never counted as a caption or a stray file
    notes = [p.reason for p in doctor(scan) if p.file == ""]
    assert any("1 with a crop box and 1 with a focus point of 4 image(s)" in n for n in notes), notes
    assert list_dataset(root).items[0].crop_box == (0.25, 0.0, 0.75, 1.0)  # the studio's listing reads it too


def test_doctor_cli_counts_crop_files(tmp_path, capsys):
    from trainer.data.doctor_cli import main

    root = make_dataset(tmp_path / "set", n=2)
    (root / "img00.crop.json").write_text('{"box": [0, 0, 0.5, 1], "focus": [0.25, 0.5]}')
    assert main([str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["crops"] == {"box": 1, "focus": 1}


def test_cache_key_changes_with_the_crop_file_only(tmp_path):
    root = tmp_path / "set"
    root.mkdir()
    gradient_image(root / "a.png", 192, 64)
    gradient_image(root / "b.png", 96, 64)

    def keys():
        ds = TrainDataset(scan_dataset(root), cfg(), seed=0)
        return {it.rel: (ds.latent_key(i, False), ds.placements[i]) for i, it in enumerate(ds.items)}

    before = keys()
    ds = TrainDataset(scan_dataset(root), cfg(), seed=0)
    for i, it in enumerate(ds.items):  # no crop file: the key is exactly the one from before crop files
        p = ds.placements[i]
        assert ds.latent_key(i, False) == stable_key(image=it.sha256, bucket=list(p.bucket), resized=list(p.resized),
                                                     crop=[p.crop_left, p.crop_top], flip=False,
                                                     background="#ffffff")
    (root / "a.crop.json").write_text('{"box": [0, 0, 0.5, 1]}')
    boxed = keys()
    assert boxed["a.png"][0] != before["a.png"][0] and boxed["b.png"] == before["b.png"]
    (root / "a.crop.json").write_text('{"box": [0.5, 0, 1, 1]}')  # same size, another part of the picture
    moved = keys()
    assert moved["a.png"][1].bucket == boxed["a.png"][1].bucket and moved["a.png"][0] != boxed["a.png"][0]
    (root / "a.crop.json").write_text('{"box": [0.5, 0, 1, 1]}\n')  # same values, other bytes: same key
    assert keys() == moved
    (root / "a.crop.json").unlink()
    assert keys() == before


def test_sample_conditioning_and_mask_follow_the_box(tmp_path):
    root = tmp_path / "set"
    root.mkdir()
    gradient_image(root / "a.png", 192, 64)
    red = np.asarray(Image.open(root / "a.png"))[:, :, 0]
    Image.fromarray(red).save(root / "a_mask.png")  # the mask is the red channel: it must stay in step
    (root / "a.crop.json").write_text('{"box": [0.25, 0, 1, 1], "focus": [1, 0.5]}')
    ds = TrainDataset(scan_dataset(root), cfg(flip=True), seed=0, masked_loss=True)
    p = ds.placements[0]
    assert p.box == (48, 0, 192, 64) and p.original == (144, 64) and p.crop_left == p.resized[0] - p.bucket[0] > 0
    s = ds.sample(0, 0)
    assert s["original_size"] == (64, 144) and s["crop_top_left"] == (p.crop_top, p.crop_left)
    for flip in (False, True):
        pixels = (ds.pixels(0, flip)[0].numpy() + 1.0) * 127.5
        mask = np.asarray(ds.masks.pixels(0, flip), dtype=np.float32)
        assert mask.shape == pixels.shape == (p.bucket[1], p.bucket[0])
        assert np.abs(mask - pixels).max() <= 1.0, flip
        assert pixels.min() >= 48 / 191 * 255 - 3  # nothing from left of the box
    boxed_key = ds.masks.key(0, False)
    (root / "a.crop.json").unlink()
    assert TrainDataset(scan_dataset(root), cfg(flip=True), seed=0, masked_loss=True).masks.key(0, False) != boxed_key


def test_a_short_run_trains_a_boxed_image_and_says_so(tmp_path):
    data = make_dataset(tmp_path / "data", n=3)
    (data / "img00.crop.json").write_text(json.dumps({"box": [0.0, 0.0, 0.5, 1.0], "focus": [0.25, 0.5]}))
    (data / "img01.crop.json").write_text(json.dumps({"focus": [0.9, 0.1]}))
    conf = write_config(tmp_path / "run", **{"dataset.path": str(data), "schedule.max_train_steps": 2,
                                             "sampling.prompts": [], "sampling.at_start": "false"})
    r = run_in_process("train", str(conf), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    ev = events(tmp_path / "run")
    started = next(e for e in ev if e["type"] == "started")
    assert started["images"] == 3 and started["crop_boxes"] == 1 and started["focus_points"] == 2
    assert [e["step"] for e in ev if e["type"] == "step"] == [1, 2]
    assert (tmp_path / "run" / "output" / "tiny-test.safetensors").is_file()


# ---- the studio's file operations -----------------------------------------------------------------------------
def test_crop_file_goes_with_its_image_and_into_the_runs_copy(tmp_path):
    from ui import dataset_files as df

    root = make_dataset(tmp_path / "set" / "images", n=2).parent
    crop = '{"box": [0, 0, 0.5, 1]}'
    (root / "images" / "img00.crop.json").write_text(crop)
    assert df.exclude_image(root, "images/img00.png") == "images/img00.png"
    assert sorted(p.name for p in (root / ".excluded/images").iterdir()) == ["img00.crop.json", "img00.png",
                                                                             "img00.txt"]
    assert df.restore_image(root, "images/img00.png") == "images/img00.png"
    assert (root / "images" / "img00.crop.json").read_text() == crop
    copy = tmp_path / "run-copy"
    assert df.copy_dataset(root, copy) == 2
    assert (copy / "images" / "img00.crop.json").read_text() == crop  # a studio run trains the box too
    assert "1 with a crop box" in df.doctor_report(root)
    assert sorted(df.delete_image(root, "images/img00.png")) == ["img00.crop.json", "img00.png", "img00.txt"]
    assert sorted(p.name for p in (root / "images").iterdir()) == ["img01.png", "img01.txt"]


def test_studio_crop_panel_saves_what_the_trainer_reads(tmp_path):
    from ui import panel_crop

    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    gradient_image(root / "images" / "a.png", 192, 64)
    assert panel_crop.load_crop(root, "images/a.png")[0] is None
    crop = panel_crop.make_crop((0.25, 0, 1, 1), True, 1.0, 0.5)
    assert "Saved `a.crop.json`" in panel_crop.save_crop(root, "images/a.png", crop)
    assert read_crop(root / "images" / "a.crop.json") == crop == panel_crop.load_crop(root, "images/a.png")[0]
    item = scan_dataset(root).items[0]
    assert (item.crop_box, item.focus) == (crop.box, crop.focus)
    seen, size = panel_crop.trainer_view(root, "images/a.png", crop, cfg())
    pixels = TrainDataset(scan_dataset(root), cfg(), seed=0).pixels(0)
    assert np.array_equal(np.asarray(seen), ((pixels.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
    assert size == "Trained at 80×48 from 144×64 px."
    assert panel_crop.marked_picture(root, "images/a.png", crop).size == (192, 64)
    with pytest.raises(CropError, match="x1 must exceed x0"):
        panel_crop.make_crop((0.6, 0, 0.5, 1), False, 0.5, 0.5)
    assert panel_crop.make_crop((0, 0, 1, 1), False, 0.2, 0.2) == Crop()  # nothing set: nothing to save
    assert "Removed" in panel_crop.save_crop(root, "images/a.png", Crop())
    assert not (root / "images" / "a.crop.json").exists() and "No crop file" in panel_crop.clear_crop(root,
                                                                                                        "images/a.png")
    (root / "images" / "a.crop.json").write_text("{oops")
    crop, msg = panel_crop.load_crop(root, "images/a.png")
    assert crop is None and "not JSON" in msg


def test_crop_handlers_write_only_inside_the_dataset(tmp_path):
    """The panel's handlers as the page calls them: a crop file lands beside a dataset image, never elsewhere,
    and a name or path out of the dataset is a message, not a crash."""
    from ui.dataset_files import Limits
    from ui.page import build_app
    from ui.workspace import Studio

    studio = Studio.create(tmp_path / "data", None, Limits())
    h = {fn.api_name: fn.fn for fn in build_app(studio).fns.values()}
    images = studio.dirs.dataset_dir("set") / "images"
    images.mkdir(parents=True)
    gradient_image(images / "a.png", 192, 64)
    gradient_image(tmp_path / "secret.png", 192, 64)
    box = (0, 0, 0.5, 1, False, 0.5, 0.5)
    assert "Saved" in h["crop_on_save"]("set", "images/a.png", 64, *box)[-1]
    assert read_crop(images / "a.crop.json") == Crop(box=(0.0, 0.0, 0.5, 1.0))
    picked = h["crop_on_pick"]("set", "images/a.png", 64, False)
    assert picked[:7] == [0.0, 0.0, 0.5, 1.0, False, 0.5, 0.5] and picked[7] is None  # panel closed: not drawn
    for name, rel in (("set", "../../../secret.png"), ("set", str(tmp_path / "secret.png")), ("../..", "a.png"),
                      ("set", "images/a.crop.json")):
        assert "Not saved" in h["crop_on_save"](name, rel, 64, *box)[-1]
        h["crop_on_clear"](name, rel, 64)
        h["crop_on_pick"](name, rel, 64, True)
    assert sorted(p.name for p in tmp_path.rglob("*.crop.json")) == ["a.crop.json"]
    assert "Removed" in h["crop_on_clear"]("set", "images/a.png", 64)[-1]
