import math
import random

import numpy as np
import pytest
from PIL import Image

from trainer.data.buckets import Buckets, make_buckets
from trainer.data.captions import decode_caption_bytes, process_caption


@pytest.mark.parametrize("res,step,aspect", [(512, 64, 2.0), (1024, 64, 2.0), (768, 32, 3.0), (128, 32, 2.0)])
def test_buckets_respect_area_step_and_aspect(res, step, aspect):
    sizes = make_buckets(res, step, aspect)
    assert (res // step * step, res // step * step) in sizes
    for w, h in sizes:
        assert w % step == 0 and h % step == 0
        assert w * h <= res * res
        assert max(w, h) / min(w, h) <= aspect + 1e-9
        assert (h, w) in sizes  # portrait and landscape alike
    assert len(sizes) == len(set(sizes))


def test_kohya_like_buckets_for_512():
    sizes = set(make_buckets(512, 64, 2.0))
    assert {(512, 512), (576, 448), (448, 576), (640, 384), (384, 640)} <= sizes


def test_assignment_picks_closest_aspect_and_fills_the_bucket():
    b = Buckets(512, 64, 2.0)
    assert b.assign(1000, 1000) == (512, 512)
    assert b.assign(1600, 900) == (640, 384)  # 16:9 -> the widest 1.67 bucket
    assert b.assign(900, 1600) == (384, 640)
    img = Image.fromarray(np.tile(np.arange(200, dtype=np.uint8), (100, 1)))
    out, p = b.apply(img.convert("RGB"))
    assert out.size == p.bucket == (640, 384)  # 2:1 beyond max aspect lands in the widest bucket
    assert p.resized[1] == 384 and p.resized[0] >= 640
    assert p.crop_left == (p.resized[0] - 640) // 2 and p.crop_top == 0
    # centre crop: the middle column of the source stays in the middle
    mid = np.asarray(out)[:, 320, 0].mean()
    assert abs(mid - 100) < 3


def test_buckets_off_is_one_square():
    b = Buckets(500, 64, 2.0, enabled=False)
    assert b.sizes == [(496, 496)]  # whole latents: a multiple of 8
    out, p = b.apply(Image.new("RGB", (300, 120)))
    assert out.size == (496, 496) and p.bucket == (496, 496)


def test_bucket_info_counts_repeats():
    b = Buckets(128, 32, 2.0)
    info = b.info([((100, 100), (128, 128), 3), ((200, 100), (160, 96), 1), ((90, 90), (128, 128), 2)])
    counts = {tuple(v["resolution"]): v["count"] for v in info["buckets"].values()}
    assert counts == {(128, 128): 5, (160, 96): 1}
    assert math.isclose(info["mean_img_ar_error"], abs(2 - 160 / 96) / 3)


def test_process_caption_shuffle_keep_dropout():
    cap = "zkq, red, blue, green, yellow, circle"
    assert process_caption(cap, False, 0, 0.0, random.Random(0)) == cap
    seen = set()
    for s in range(30):
        out = process_caption(cap, True, 1, 0.0, random.Random(s))
        tags = out.split(", ")
        assert tags[0] == "zkq" and sorted(tags) == sorted(cap.split(", "))
        seen.add(out)
    assert len(seen) > 5
    assert process_caption(cap, True, 2, 0.0, random.Random(7)) == process_caption(cap, True, 2, 0.0, random.Random(7))
    dropped = sum(process_caption(cap, False, 0, 0.3, random.Random(s)) == "" for s in range(1000))
    assert 240 < dropped < 360
    assert process_caption(cap, True, 0, 1.0, random.Random(1)) == ""


def test_decode_caption_bytes():
    assert decode_caption_bytes("naïve".encode("utf-8")) == ("naïve", None)
    text, note = decode_caption_bytes("naïve".encode("utf-16"))
    assert text == "naïve" and "UTF-16" in note
    text, note = decode_caption_bytes("“quoted” café".encode("cp1252"))
    assert text == "“quoted” café" and "not UTF-8" in note
    text, note = decode_caption_bytes("tags, more".encode("utf-16-le"))
    assert text == "tags, more" and "UTF-16" in note
    text, note = decode_caption_bytes("tags, more".encode("utf-16-be"))
    assert text == "tags, more" and "UTF-16" in note
