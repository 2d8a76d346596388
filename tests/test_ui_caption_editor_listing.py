"""Issue #14: Next / Previous, a caption save and the doctor after it cost what one image costs, not what the
dataset costs. The Dataset tab's handlers, called as the page calls them, on a real folder: moving between images
lists nothing again and reads no caption but the shown one; after an edit (saved on the way, or with Save) the tag
table, the doctor and the listing give the trainer's answers without re-reading every caption or re-decoding every
picture; a change made outside the studio is seen at once, even one the stat of a file could miss."""
from __future__ import annotations

import io
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

import trainer.data.scan as scan_mod
from trainer.data.scan import list_dataset, scan_dataset
from ui import dataset_files as df

N = 30
OLD = time.time() - 3600  # files written an hour ago: settled (trainer.data.scan.settled)


def png_bytes(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40 + i, 48), (7 * i % 255, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def make_images(folder: Path, n: int = N) -> list[str]:
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"img-{i:03d}.png").write_bytes(png_bytes(i))
        if i % 3:  # a third without a caption
            (folder / f"img-{i:03d}.txt").write_text(f"zkq, tag{i % 4}, shared", encoding="utf-8")
    for p in folder.iterdir():
        os.utime(p, (OLD, OLD))
    return [f"{folder.name}/img-{i:03d}.png" for i in range(n)]


class Counting:
    """Counts calls of a module function (still calling it)."""

    def __init__(self, monkeypatch, module, name):
        self.n, real = 0, getattr(module, name)

        def counted(*a, **kw):
            self.n += 1
            return real(*a, **kw)
        monkeypatch.setattr(module, name, counted)


def trainers_tags(root: Path) -> dict[str, int]:
    total = Counter()
    for counts in scan_dataset(root, check_images=False).tag_frequency.values():  # headers only: decodes none
        total.update(counts)
    return dict(total)


@pytest.fixture()
def tab(tmp_path):
    from ui.page import build_app
    from ui.workspace import Studio

    studio = Studio.create(tmp_path / "data", None, df.Limits())
    root = studio.dirs.dataset_dir("set")
    rels = make_images(root / "images")
    h = {fn.api_name: fn.fn for fn in build_app(studio).fns.values()}
    return h, root, rels


def test_next_and_previous_list_nothing_again_and_read_only_the_shown_caption(tab, monkeypatch):
    h, root, rels = tab
    prev, nxt = h["on_step"], h["on_step_1"]  # registered in this order (ui/tab_dataset.py)
    ed = nxt("set", {"ds": "set", "rel": rels[5]}, None, rels)[4]  # the first call lists the dataset
    assert ed["rel"] == rels[6]
    listings = Counting(monkeypatch, df, "list_dataset")
    scanned_captions = Counting(monkeypatch, scan_mod, "read_caption")  # the scan's read of each caption file
    opened = Counting(monkeypatch, df, "caption_file")  # the editor's read of a caption
    for want in rels[7:12]:
        out = nxt("set", ed, None, rels)
        ed = out[4]
        assert ed["rel"] == want and out[1]["value"] == want
        assert out[3] == df.read_caption(root / want)
    for want in reversed(rels[8:11]):
        ed = prev("set", ed, None, rels)[4]
        assert ed["rel"] == want
    assert listings.n == 0 and scanned_captions.n == 0
    assert opened.n == 8 + 5  # one caption per image shown (+5: the checks above read five directly)
    assert nxt("set", {"ds": "set", "rel": rels[-1]}, None, rels)[4]["rel"] == rels[0]  # wraps around


def test_tag_counts_and_doctor_are_right_after_an_edit_and_next(tab, monkeypatch):
    h, root, rels = tab
    nxt, save = h["on_step_1"], h["on_save"]
    uncaptioned = rels[3]  # i % 3 == 0: no caption file
    assert f"{uncaptioned}`: no caption file" in h["on_doctor"]("set")  # the doctor's first scan decodes all
    nxt("set", {"ds": "set", "rel": rels[2]}, None, rels)
    listings = Counting(monkeypatch, df, "list_dataset")
    decoded = Counting(monkeypatch, scan_mod, "load_image")

    # an edit saved on the way to the next image: the tag table the step returns is the trainer's count
    out = nxt("set", {"ds": "set", "rel": uncaptioned}, "zkq, freshly typed, shared", rels)
    assert "Saved your edit" in out[5] and out[4]["rel"] == rels[4]
    shown = dict((t, n) for t, n in out[6])
    assert shown == trainers_tags(root) and shown["freshly typed"] == 1 and shown["zkq"] == 2 * N // 3 + 1
    assert listings.n == 0  # the studio's own save updated the remembered listing
    report = h["on_doctor"]("set")
    assert f"Dataset doctor: {N} image(s) will be trained" in report
    assert f"{uncaptioned}`: no caption file" not in report and f"{rels[6]}`: no caption file" in report
    assert decoded.n == 0  # the pictures did not change: the doctor's re-scan decoded none of them

    # Save: the same
    msg, tags, ed = save("set", rels[4], "zkq, saved with the button")
    assert "Saved caption" in msg and ed == {"ds": "set", "rel": rels[4], "caption": "zkq, saved with the button"} and dict((t, n) for t, n in tags) == trainers_tags(root)
    assert dict((t, n) for t, n in tags)["saved with the button"] == 1
    assert listings.n == 0 and decoded.n == 0
    view = {it.rel: (it.caption, it.caption_file) for it in df.dataset_view(root).items}
    assert view == {it.rel: (it.caption, it.caption_file) for it in list_dataset(root).items}


def test_changes_made_outside_the_studio_are_seen_at_once(tab):
    h, root, rels = tab
    nxt = h["on_step_1"]
    df.dataset_view(root)  # remembered
    # rewritten in place, same size, at once: the stat may not change within one timestamp tick; the listing
    # made from the files an hour old is kept, but this file is new again, so the next call lists afresh
    cap = root / "images" / "img-001.txt"
    cap.write_text("zkq, tag9, shared", encoding="utf-8")
    assert {it.rel: it.caption for it in df.dataset_view(root).items}[rels[1]] == "zkq, tag9, shared"
    cap.write_text("zkq, tag8, shared", encoding="utf-8")
    assert {it.rel: it.caption for it in df.dataset_view(root).items}[rels[1]] == "zkq, tag8, shared"
    assert dict(df.tag_frequency(root)) == trainers_tags(root)
    # an image deleted outside: Next skips it, though the page's list still has it
    (root / "images" / "img-011.png").unlink()
    assert nxt("set", {"ds": "set", "rel": rels[10]}, None, rels)[4]["rel"] == rels[12]
    # an image's pixels replaced: the doctor decodes that one again
    assert "will be trained" in h["on_doctor"]("set")
    Image.new("RGB", (8, 8), (0, 0, 0)).save(root / "images" / "img-012.png")
    assert "tiny image(s) under" in h["on_doctor"]("set")


def test_a_remembered_decode_gives_the_scan_it_replaces(tmp_path):
    """trainer.data.scan with `decoded`: the same items and problems as a scan that decodes everything."""
    make_images(tmp_path / "images", 6)
    (tmp_path / "images" / "broken.png").write_bytes(png_bytes(1)[:60])
    os.utime(tmp_path / "images" / "broken.png", (OLD, OLD))
    memo: dict = {}
    first, again, plain = (scan_dataset(tmp_path, decoded=memo), scan_dataset(tmp_path, decoded=memo),
                           scan_dataset(tmp_path))
    assert len(memo) == 7 and any(isinstance(v, str) for v in memo.values())  # the broken one's reason too
    for s in (first, again):
        assert s.items == plain.items and s.problems == plain.problems
    fresh = tmp_path / "images" / "new.png"
    fresh.write_bytes(png_bytes(9))  # written just now: decoded, not remembered (its stat could still repeat)
    scan_dataset(tmp_path, decoded=memo)
    assert len(memo) == 7


def test_a_caption_changed_elsewhere_is_not_overwritten_by_the_box_it_was_not_edited_in(tab):
    """A caption job (or the bulk tools, another page, a text editor) rewrote the shown image's caption while
    the box still holds the text it was shown with: moving on keeps the new caption; an edit made in the box
    is still saved on the way."""
    h, root, rels = tab
    nxt, save = h["on_step_1"], h["on_save"]
    out = nxt("set", {"ds": "set", "rel": rels[0]}, None, rels)
    ed, shown = out[4], out[3]
    assert ed == {"ds": "set", "rel": rels[1], "caption": shown} and shown == df.read_caption(root / rels[1])
    cap = root / "images" / "img-001.txt"
    cap.write_text("zq, written by the tagger", encoding="utf-8")
    out = nxt("set", ed, shown, rels)  # the box untouched since it was shown
    assert out[5] is not None and "Saved your edit" not in str(out[5])
    assert cap.read_text(encoding="utf-8").strip() == "zq, written by the tagger"
    # an uncaptioned image shown with an empty box, then captioned elsewhere: the empty box saves nothing
    ed = nxt("set", {"ds": "set", "rel": rels[2]}, None, rels)[4]
    assert ed["rel"] == rels[3] and ed["caption"] == ""
    (root / "images" / "img-003.txt").write_text("zq, long hair", encoding="utf-8")
    nxt("set", ed, "", rels)
    assert df.read_caption(root / rels[3]) == "zq, long hair"
    # edited in the box: the person's edit is saved on the way
    out = nxt("set", {"ds": "set", "rel": rels[4], "caption": df.read_caption(root / rels[4])}, "zq, my edit", rels)
    assert "Saved your edit" in out[5] and df.read_caption(root / rels[4]) == "zq, my edit"
    # after Save the box's text is what the file holds: a later change elsewhere survives moving on too
    _, _, ed = save("set", rels[5], "zq, saved")
    (root / "images" / "img-005.txt").write_text("zq, changed again elsewhere", encoding="utf-8")
    nxt("set", ed, "zq, saved", rels)
    assert df.read_caption(root / rels[5]) == "zq, changed again elsewhere"
