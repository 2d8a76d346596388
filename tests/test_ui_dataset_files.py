"""Server-side dataset handling: checked uploads, zip refusals before extraction, caption tools, repeats."""
import io
import os
import stat
import threading
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from ui import dataset_files as df
from ui.paths import DataDirs, UnsafePath, inside, safe_name


def png_bytes(color=(200, 30, 30), size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def test_uploads_keep_images_and_refuse_odd_files(tmp_path):
    up = tmp_path / "up"
    up.mkdir()
    files = [write(up / "cat one.png", png_bytes()), write(up / "cat one.txt", b"a sks cat, sitting"),
             write(up / "fake.png", b"MZ\x90\x00 this is an exe"), write(up / "tool.exe", b"MZ"),
             write(up / "huge.png", png_bytes(size=(300, 300)))]
    rep = df.import_uploads(files, tmp_path / "ds", df.Limits(max_pixels=200 * 200))
    assert rep.added == ["images/cat one.png", "images/cat one.txt"]  # the names are kept
    reasons = "\n".join(rep.rejected)
    assert "fake.png: not a readable image" in reasons
    assert "Error" not in reasons  # reasons in words, never an exception's class name
    assert "tool.exe: not an image or caption" in reasons
    assert "huge.png: 300×300 is more than 40000 pixels" in reasons
    assert df.read_caption(tmp_path / "ds/images/cat one.png") == "a sks cat, sitting"


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for info, data in entries:
            z.writestr(info, data)
    return path


def _symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


@pytest.mark.parametrize("bad, reason", [
    (("../evil.png", png_bytes()), "path with '..'"),
    (("/etc/evil.png", png_bytes()), "absolute path"),
    (("sub/../../evil.png", png_bytes()), "path with '..'"),
    (_symlink_entry("10_cat/link.png", "/etc/passwd"), "symbolic link"),
    (("bomb.txt", b"\0" * 5_000_000), "zip bomb"),
])
def test_zip_refused_whole_before_extraction(tmp_path, bad, reason):
    z = _zip(tmp_path / "set.zip", [("10_cat/a.png", png_bytes()), bad])
    dest = tmp_path / "ds"
    dest.mkdir()
    rep = df.import_uploads([z], dest)
    assert rep.added == []
    assert len(rep.rejected) == 1 and reason in rep.rejected[0] and "set.zip" in rep.rejected[0]
    assert list(dest.rglob("*")) == []  # nothing extracted, not even the good entry
    assert not (tmp_path / "evil.png").exists()


def test_zip_with_repeat_folders_is_imported(tmp_path):
    z = _zip(tmp_path / "set.zip", [("10_cat/a.png", png_bytes()), ("10_cat/a.txt", b"sks cat"),
                                    ("loose.jpg", png_bytes()), ("__MACOSX/._a.png", b"junk"),
                                    ("notes.md", b"hello")])
    rep = df.import_uploads([z], tmp_path / "ds")
    assert sorted(rep.added) == ["10_cat/a.png", "10_cat/a.txt", "images/loose.jpg"]
    assert any("notes.md" in r for r in rep.rejected)
    assert df.folders(tmp_path / "ds") == [("10_cat", 10, 1), ("images", None, 1)]


def test_caption_tools_and_tag_frequency(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    for i, cap in enumerate(["a cat, red", "a cat, blue", ""]):
        write(root / "images" / f"{i}.png", png_bytes())
        if cap:
            df.write_caption(root / "images" / f"{i}.png", cap)
    assert df.bulk_edit(root, "trigger", "sks") == 3
    assert df.bulk_edit(root, "trigger", "sks") == 0  # already first tag: idempotent
    assert df.bulk_edit(root, "replace", "cat", "dog") == 2
    assert df.bulk_edit(root, "suffix", ", photo") == 3
    assert df.read_caption(root / "images/0.png") == "sks, a dog, red, photo"
    assert df.read_caption(root / "images/2.png") == "sks, photo"
    assert dict(df.tag_frequency(root))["sks"] == 3
    with pytest.raises(ValueError, match="empty"):
        df.bulk_edit(root, "replace", "", "x")


def test_repeats_rename_folder_and_refuse_escape(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    write(root / "images/a.png", png_bytes())
    assert df.set_repeats(root, "images", 5) == "5_images"
    assert df.set_repeats(root, "5_images", 2) == "2_images"
    with pytest.raises((ValueError, UnsafePath)):
        df.set_repeats(root, "../", 3)


def test_names_and_paths_stay_inside(tmp_path):
    assert safe_name("../../etc/passwd") == "etc-passwd"
    assert safe_name("..") == "untitled"
    dirs = DataDirs.at(tmp_path / "data")
    for bad in ("../x", "a/b", "", "..", "/etc"):
        with pytest.raises(UnsafePath):
            dirs.run_dir(bad)
    with pytest.raises(UnsafePath):
        inside(tmp_path / "data", "../outside.txt")
    (tmp_path / "data" / "runs" / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePath):
        inside(tmp_path / "data" / "runs", "link/secret")


def jpeg_bytes(size=(128, 128)) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_truncated_images_are_refused_with_the_trainers_reason(tmp_path):
    up = tmp_path / "up"
    up.mkdir()
    full = jpeg_bytes()
    files = [write(up / "cut.jpg", full[: len(full) // 2]), write(up / "cut.png", png_bytes(size=(300, 300))[:400]),
             write(up / "empty.png", b""), write(up / "page.png", b"<!doctype html><html>404</html>")]
    rep = df.import_uploads(files, tmp_path / "ds")
    assert rep.added == []
    reasons = dict(r.split(": ", 1) for r in rep.rejected)
    assert "truncated" in reasons["cut.jpg"] and "truncated" in reasons["cut.png"], reasons
    assert "empty" in reasons["empty.png"] and "HTML page" in reasons["page.png"], reasons


@pytest.mark.parametrize("name, stored, why", [
    ("ünïcødé 猫 🐱.png", "ünïcødé 猫 🐱.png", None),
    ("u\u0308ber.png", "über.png", None),  # macOS writes decomposed names: stored composed, as the scan matches
    (".hidden-cat.png", "hidden-cat.png", "hidden"),
    ("CON.png", "_CON.png", "Windows"),
    ("cat .png", "cat.png", "ends"),
    ("a" * 200 + ".png", "a" * 150 + ".png", "longer"),
])
def test_unicode_names_are_kept_and_renames_are_reported(tmp_path, name, stored, why):
    up = tmp_path / "up"
    up.mkdir()
    rep = df.import_uploads([write(up / name, png_bytes())], tmp_path / "ds")
    assert rep.added == [f"images/{stored}"], rep
    assert (tmp_path / "ds" / "images" / stored).is_file()
    renames = [c for c in rep.changed if "renamed" in c]
    if why is None:
        assert renames == []
    else:
        assert len(renames) == 1 and name in renames[0] and stored in renames[0] and why in renames[0], renames
        assert "renamed" in rep.summary()


def test_a_clashing_name_is_renamed_and_its_caption_follows(tmp_path):
    up = tmp_path / "up"
    up.mkdir()
    root = tmp_path / "ds"
    first = df.import_uploads([write(up / "cat.png", png_bytes()), write(up / "cat.txt", b"first cat")], root)
    assert first.changed == []
    second = df.import_uploads([write(up / "cat.txt", b"second cat"), write(up / "cat.png", png_bytes((1, 2, 3)))],
                               root)
    assert sorted(second.added) == ["images/cat-1.png", "images/cat-1.txt"]
    assert any("cat.png: renamed to cat-1.png" in c and "already" in c for c in second.changed), second.changed
    assert df.read_caption(root / "images/cat.png") == "first cat"  # the first image keeps its caption
    assert df.read_caption(root / "images/cat-1.png") == "second cat"


@pytest.mark.parametrize("raw, text, said", [
    ("café au lait, sks".encode("utf-16"), "café au lait, sks", "UTF-16"),
    ("café au lait, sks".encode("utf-16-le"), "café au lait, sks", "UTF-16"),
    ("crème brûlée, sks".encode("cp1252"), "crème brûlée, sks", "Windows-1252"),
    (b"\xef\xbb\xbfplain, sks", "plain, sks", None),
    ("déjà vu, sks".encode("utf-8"), "déjà vu, sks", None),
])
def test_captions_in_other_encodings_are_stored_as_utf8_and_said_so(tmp_path, raw, text, said):
    up = tmp_path / "up"
    up.mkdir()
    rep = df.import_uploads([write(up / "a.png", png_bytes()), write(up / "a.txt", raw)], tmp_path / "ds")
    assert sorted(rep.added) == ["images/a.png", "images/a.txt"], rep
    assert (tmp_path / "ds/images/a.txt").read_bytes().decode("utf-8") == text
    if said:
        assert any(c.startswith("a.txt: converted to UTF-8") and said in c for c in rep.changed), rep.changed
    else:
        assert rep.changed == []


def test_discard_uploads_touches_only_the_upload_cache(tmp_path):
    cache = tmp_path / ".gradio"
    inside_file = write((cache / "uploads" / "abc123").mkdir(parents=True) or cache / "uploads/abc123/x.png", b"x")
    outside = write(tmp_path / "mine.png", b"mine")
    link = cache / "uploads" / "link.png"
    link.symlink_to(outside)
    gradio_leftover = write(cache / "uploads" / "tmpab12cd34", b"")
    os.utime(gradio_leftover, (time.time() - 7200, time.time() - 7200))
    receiving = write(cache / "uploads" / "tmpjustnow", b"")  # could be an upload being received: kept
    busy = write(cache / "uploads" / "tmp-not-empty", b"data")
    assert df.discard_uploads([inside_file, outside, link, cache], cache) == 1
    assert not inside_file.exists() and not (cache / "uploads" / "abc123").exists()  # emptied folder gone too
    assert not gradio_leftover.exists() and busy.exists() and receiving.exists()
    assert outside.read_bytes() == b"mine" and link.is_symlink() and cache.is_dir()


def _dataset(tmp_path, captions: dict[str, str]) -> Path:
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    for i, (name, cap) in enumerate(captions.items()):
        write(root / "images" / name, png_bytes((40 * i, 100, 100)))
        if cap is not None:
            df.write_caption(root / "images" / name, cap)
    return root


def test_bulk_edit_preview_writes_nothing_and_undo_restores(tmp_path):
    root = _dataset(tmp_path, {"a.png": "a cat", "b.png": "sks, a dog", "c.png": None})
    before = {p.name: p.read_bytes() for p in (root / "images").iterdir()}
    plan = df.plan_bulk_edit(root, "trigger", "sks")
    assert plan == [("images/a.png", "a cat", "sks, a cat"), ("images/c.png", "", "sks")]
    assert {p.name: p.read_bytes() for p in (root / "images").iterdir()} == before  # a preview writes nothing
    done = df.apply_caption_changes(root, plan)
    assert df.read_caption(root / "images/c.png") == "sks"
    df.write_caption(root / "images/a.png", "edited by hand")  # changed after the bulk edit: undo leaves it
    restored, kept = df.undo_caption_changes(root, done)
    assert (restored, kept) == (1, ["images/a.png"])
    assert not (root / "images/c.txt").exists()  # it had no caption file before
    assert df.read_caption(root / "images/a.png") == "edited by hand"
    with pytest.raises(ValueError, match="trigger"):
        df.plan_bulk_edit(root, "trigger", "  ")


def test_exclude_restore_and_delete(tmp_path):
    root = _dataset(tmp_path, {"a.png": "a cat", "b.png": "a dog"})
    (root / "images" / "a.caption").write_text("old caption")
    assert df.exclude_image(root, "images/a.png") == "images/a.png"
    assert [p.name for p in df.list_images(root)] == ["b.png"]  # not trained, not in the run's copy
    assert df.excluded_images(root) == ["images/a.png"]
    assert sorted(p.name for p in (root / ".excluded/images").iterdir()) == ["a.caption", "a.png", "a.txt"]
    assert "1 excluded" in df.doctor_report(root)
    assert df.restore_image(root, "images/a.png") == "images/a.png"
    assert df.read_caption(root / "images/a.png") == "a cat" and df.excluded_images(root) == []
    assert sorted(df.delete_image(root, "images/b.png")) == ["b.png", "b.txt"]
    assert [p.name for p in df.list_images(root)] == ["a.png"]
    for bad in ("../outside.png", "images/missing.png", "images/a.txt"):
        with pytest.raises((ValueError, UnsafePath)):
            df.delete_image(root, bad)
    with pytest.raises((ValueError, UnsafePath)):
        df.restore_image(root, "../../etc/passwd")


def test_a_mask_goes_where_its_image_goes(tmp_path):
    """Exclude, restore and delete take the image's `_mask.png` along; a restore onto a taken name renames both."""
    root = _dataset(tmp_path, {"a.png": "a cat", "b.png": "a dog"})
    write(root / "images/a_mask.png", png_bytes((255, 255, 255)))
    write(root / "images/b_MASK.png", png_bytes((255, 255, 255)))
    assert {it.rel: it.mask_file for it in df.dataset_view(root).items}["images/a.png"] == "images/a_mask.png"
    df.exclude_image(root, "images/a.png")
    assert sorted(p.name for p in (root / ".excluded/images").iterdir()) == ["a.png", "a.txt", "a_mask.png"]
    assert df.excluded_images(root) == ["images/a.png"]  # a mask is not an excluded image of its own
    assert "a_mask" not in df.doctor_report(root)  # no "mask without an image" left behind
    write(root / "images/a.png", png_bytes((1, 2, 3)))  # another a.png meanwhile: the restored one is renamed
    assert df.restore_image(root, "images/a.png") == "images/a-1.png"
    masks = {it.rel: it.mask_file for it in df.dataset_view(root).items}
    assert masks == {"images/a.png": None, "images/a-1.png": "images/a-1_mask.png", "images/b.png": "images/b_MASK.png"}
    assert sorted(df.delete_image(root, "images/b.png")) == ["b.png", "b.txt", "b_MASK.png"]
    assert not (root / "images/b_MASK.png").exists()


def test_an_uploaded_mask_stays_paired_with_its_renamed_image(tmp_path):
    up, root = tmp_path / "up", tmp_path / "ds"
    up.mkdir()
    df.import_uploads([write(up / "cat.png", png_bytes()), write(up / "cat_mask.png", png_bytes((9, 9, 9)))], root)
    second = df.import_uploads([write(up / "cat_mask.png", png_bytes((255, 255, 255))),
                                write(up / "cat.png", png_bytes((1, 2, 3))), write(up / "cat.txt", b"second")], root)
    assert sorted(second.added) == ["images/cat-1.png", "images/cat-1.txt", "images/cat-1_mask.png"]
    said = "cat_mask.png: renamed to cat-1_mask.png (follows its image"
    assert any(said in c for c in second.changed), second.changed
    view = {it.rel: it.mask_file for it in df.dataset_view(root).items}
    assert view == {"images/cat.png": "images/cat_mask.png", "images/cat-1.png": "images/cat-1_mask.png"}
    assert Image.open(root / "images/cat_mask.png").getpixel((0, 0)) == (9, 9, 9)  # the first mask is untouched
    # in a zip too, whatever the entries' order
    zpath = up / "more.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("images/cat_mask.png", png_bytes((255, 255, 255)))
        z.writestr("images/cat.png", png_bytes((4, 5, 6)))
    third = df.import_uploads([zpath], root)
    assert sorted(third.added) == ["images/cat-2.png", "images/cat-2_mask.png"], third.added


def test_previews_show_what_the_trainer_sees_and_mark_skipped_files(tmp_path):
    root = _dataset(tmp_path, {"a.png": "x"})
    Image.new("RGBA", (400, 200), (0, 0, 0, 0)).save(root / "images" / "clear.tif")
    full = jpeg_bytes()
    write(root / "images" / "cut.jpg", full[: len(full) // 2])
    thumb, skip = df.preview(root, "images/clear.tif", df.THUMB_SIDE)
    assert skip is None and thumb.suffix == ".jpg"
    with Image.open(thumb) as im:
        assert im.size == (256, 128) and im.getpixel((10, 10)) == (255, 255, 255)  # alpha on white, like the trainer
    _, skip = df.preview(root, "images/cut.jpg", df.THUMB_SIDE)
    assert "truncated" in skip
    assert df.preview(root, "images/cut.jpg", df.THUMB_SIDE)[1] == skip  # cached with its reason
    report = df.doctor_report(root)
    line = next(ln for ln in report.splitlines() if "cut.jpg" in ln)
    assert "truncated" in line and "skipped" in line and "1 file(s) will be skipped" in report
    (root / "images" / "cut.jpg").unlink()
    df.prune_previews(root, ["images/a.png", "images/clear.tif"])
    assert len(list((root / ".atelier-cache/previews/256").glob("*.jpg"))) == 1  # clear.tif's; cut.jpg's went


@pytest.fixture
def fsyncs(monkeypatch):
    """Counts the fsyncs in flight at once, each held 50 ms: a "most" of 1 means every write waited for the one
    before (500 captions, 500 uploads, 300 thumbnails took seconds of fsync each that way)."""
    real, lock, state = os.fsync, threading.Lock(), {"now": 0, "most": 0, "calls": 0}

    def fsync(fd):
        with lock:
            state["now"] += 1
            state["calls"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            time.sleep(0.05)
            return real(fd)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(os, "fsync", fsync)
    return state


def test_a_bulk_edit_and_its_undo_write_the_captions_together(tmp_path, fsyncs):
    root = _dataset(tmp_path, {f"{i:02d}.png": (f"a cat {i}" if i % 3 else None) for i in range(12)})
    fsyncs["most"] = 0
    done = df.apply_caption_changes(root, df.plan_bulk_edit(root, "trigger", "sks"))
    assert fsyncs["most"] > 1, fsyncs
    assert [df.read_caption(root / f"images/{i:02d}.png") for i in (0, 1)] == ["sks", "sks, a cat 1"]
    fsyncs["most"] = 0
    assert df.undo_caption_changes(root, done) == (12, [])
    assert fsyncs["most"] > 1, fsyncs
    assert not (root / "images/00.txt").exists() and df.read_caption(root / "images/01.png") == "a cat 1"


def test_an_upload_writes_its_files_together_and_same_names_stay_apart(tmp_path, fsyncs):
    files = [write(tmp_path / f"{i:02d}.png", png_bytes((20 * i, 50, 50))) for i in range(10)]
    files.append(write(tmp_path / "05.txt", b"fifth"))
    (tmp_path / "other").mkdir()
    # the same name twice in one upload: the second is renamed, though the first is not on the disk yet
    files.append(write(tmp_path / "other/03.png", png_bytes((1, 2, 3))))
    rep = df.import_uploads(files, tmp_path / "ds")
    assert fsyncs["most"] > 1, fsyncs
    assert sorted(rep.added) == sorted([*(f"images/{i:02d}.png" for i in range(10)), "images/03-1.png",
                                        "images/05.txt"])
    stored = tmp_path / "ds" / "images"
    assert {(stored / "03.png").read_bytes(), (stored / "03-1.png").read_bytes()} == {
        files[3].read_bytes(), files[-1].read_bytes()}
    assert df.read_caption(stored / "05.png") == "fifth"


def test_thumbnails_are_made_together_in_order(tmp_path, fsyncs):
    root = _dataset(tmp_path, {f"{i}.png": None for i in range(6)})  # red 0, 40, ... 200
    rels = [it.rel for it in df.dataset_view(root).items]
    made = df.previews(root, rels)
    assert fsyncs["most"] > 1, fsyncs
    assert made == [df.preview(root, rel) for rel in rels]  # the same files, in the order asked
    colours = [Image.open(path).convert("RGB").getpixel((5, 5)) for path, _ in made]
    assert [round(c[0] / 40) for c in colours] == list(range(6))  # each thumbnail shows its own image
