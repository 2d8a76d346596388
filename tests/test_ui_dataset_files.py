"""Server-side dataset handling: checked uploads, zip refusals before extraction, caption tools, repeats."""
import io
import stat
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
    assert rep.added == ["images/cat-one.png", "images/cat-one.txt"]
    reasons = "\n".join(rep.rejected)
    assert "fake.png: not a readable image" in reasons
    assert "tool.exe: not an image or caption" in reasons
    assert "huge.png: 300×300 is more than 40000 pixels" in reasons
    assert df.read_caption(tmp_path / "ds/images/cat-one.png") == "a sks cat, sitting"


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
