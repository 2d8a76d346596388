"""The tag editor's operations (ui/tag_edits.py) on real caption files, applied and undone with the Dataset tab's
bulk-edit apply/undo."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from trainer.data.captions import split_tags
from ui import dataset_files as df
from ui import tag_edits as te


def make_dataset(tmp_path: Path, captions: dict[str, str]) -> Path:
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    for i, (name, cap) in enumerate(captions.items()):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (10 * i % 256, 90, 90)).save(buf, "PNG")
        (root / "images" / name).write_bytes(buf.getvalue())
        if cap is not None:
            df.write_caption(root / "images" / name, cap)
    return root


@pytest.mark.parametrize("op, tag, new, keep, before, after", [
    ("add", "smile", "", 0, "sks, red hair", "sks, red hair, smile"),
    ("add", "Smile", "", 0, "sks, smile", "sks, smile"),  # present (tags compare in lower case, as counted)
    ("remove", "red hair", "", 1, "sks, red hair, smile, red hair", "sks, smile"),
    ("remove", "sks", "", 1, "sks, red hair", "red hair"),  # a kept tag goes when the op names it
    ("rename", "red hair", "crimson hair", 0, "sks, red hair, smile", "sks, crimson hair, smile"),
    ("rename", "Red Hair", "red hair", 0, "sks, Red Hair", "sks, red hair"),  # only the spelling changes
    # onto a tag the caption already has: one copy stays, where the first of the two was
    ("rename", "red hair", "long hair", 0, "sks, long hair, red hair, smile", "sks, long hair, smile"),
    ("rename", "sks", "long hair", 1, "sks, smile, long hair", "long hair, smile"),
    ("front", "smile", "", 0, "sks, red hair, smile", "smile, sks, red hair"),
    ("front", "smile", "", 1, "sks, red hair, smile", "sks, smile, red hair"),  # after the kept trigger
    ("front", "red hair", "", 2, "sks, red hair, smile", "sks, red hair, smile"),  # kept: stays
    ("front", "blue eyes", "", 0, "sks, red hair", "sks, red hair"),  # absent: nothing
    ("sort_alpha", "", "", 1, "sks, smile, Blue eyes, red hair", "sks, Blue eyes, red hair, smile"),
    ("sort_alpha", "", "", 0, "sks, smile, Blue eyes", "Blue eyes, sks, smile"),
    ("sort_alpha", "", "", 9, "sks, smile, blue eyes", "sks, smile, blue eyes"),  # keep beyond the caption
])
def test_each_operation_on_one_caption(op, tag, new, keep, before, after):
    assert te.join_tags(te.edit_tags(split_tags(before), op, tag, new, keep)) == after


def test_sort_by_count_keeps_the_first_n_and_orders_the_rest_by_the_datasets_counts(tmp_path):
    root = make_dataset(tmp_path, {"a.png": "sks, rare, common, mid", "b.png": "common, mid", "c.png": "Common",
                                   "d.png": "sks"})
    plan = te.plan_tag_edit(root, "sort_count", keep=1)
    assert plan == [("images/a.png", "sks, rare, common, mid", "sks, common, mid, rare")]
    assert te.plan_tag_edit(root, "sort_count", keep=0)[0][2] == "common, mid, sks, rare"  # ties: A→Z


def test_select_by_tag_and_by_none_of(tmp_path):
    caps = {"a": "sks, red hair, smile", "b": "sks, Red Hair", "c": "sks, blue eyes", "d": ""}
    assert te.select(caps, ["red hair"]) == ["a", "b"]
    assert te.select(caps, ["red hair", "smile"]) == ["a"]
    assert te.select(caps, [], ["red hair"]) == ["c", "d"]
    assert te.select(caps, ["sks"], ["smile", "blue eyes"]) == ["b"]
    assert te.select(caps) == ["a", "b", "c", "d"]


def test_a_rename_across_a_selection_is_previewed_applied_and_undone(tmp_path):
    caps = {f"{i:02d}.png": ("sks, red hair, smile" if i < 10 else "sks, blue eyes") for i in range(12)}
    caps["10.png"] = "sks, crimson hair, red hair"  # already has the new name: no duplicate
    root = make_dataset(tmp_path, caps)
    chosen = te.select(te.captions(root), ["red hair"])
    assert len(chosen) == 11
    before = {p.name: p.read_bytes() for p in (root / "images").iterdir()}
    plan = te.plan_tag_edit(root, "rename", "red hair", "crimson hair", chosen[:10], keep=1)
    assert {p.name: p.read_bytes() for p in (root / "images").iterdir()} == before  # a plan writes nothing
    assert [r for r, _, _ in plan] == [f"images/{i:02d}.png" for i in range(10)]
    assert plan[0][1:] == ("sks, red hair, smile", "sks, crimson hair, smile")
    done = df.apply_caption_changes(root, plan)
    counts = dict(df.tag_frequency(root))
    assert counts["crimson hair"] == 11 and counts["red hair"] == 1  # 10.png was not in the selection
    all_plan = te.plan_tag_edit(root, "rename", "red hair", "crimson hair")
    assert all_plan == [("images/10.png", "sks, crimson hair, red hair", "sks, crimson hair")]
    df.write_caption(root / "images/03.png", "edited by hand")  # edited after the rename: undo leaves it
    restored, kept = df.undo_caption_changes(root, done)
    assert (restored, kept) == (9, ["images/03.png"])
    assert df.read_caption(root / "images/00.png") == "sks, red hair, smile"
    assert df.read_caption(root / "images/03.png") == "edited by hand"


def test_add_remove_and_front_over_a_selection_respect_the_kept_tags(tmp_path):
    root = make_dataset(tmp_path, {"a.png": "sks, red hair, smile", "b.png": "sks, smile", "c.png": None})
    assert te.plan_tag_edit(root, "add", "solo", selection=["images/a.png", "images/c.png"]) == [
        ("images/a.png", "sks, red hair, smile", "sks, red hair, smile, solo"), ("images/c.png", "", "solo")]
    assert te.plan_tag_edit(root, "front", "smile", keep=1) == [
        ("images/a.png", "sks, red hair, smile", "sks, smile, red hair")]
    assert te.plan_tag_edit(root, "remove", "smile", selection=["images/b.png", "images/missing.png"]) == [
        ("images/b.png", "sks, smile", "sks")]


@pytest.mark.parametrize("op, tag, new, said", [
    ("rename", "red hair", "", "new name"),
    ("rename", "red hair", "a, b", "comma"),
    ("rename", "red hair", "red hair", "already has that name"),
    ("add", "  ", "", "type or pick a tag"),
    ("explode", "x", "", "unknown tag operation"),
])
def test_bad_input_is_refused_with_the_reason(tmp_path, op, tag, new, said):
    root = make_dataset(tmp_path, {"a.png": "sks, red hair"})
    with pytest.raises(ValueError, match=said):
        te.plan_tag_edit(root, op, tag, new)
