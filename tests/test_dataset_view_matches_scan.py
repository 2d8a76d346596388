"""Issue #13: the studio's dataset view, tag frequency, folders and doctor give the trainer's answers, on a
folder holding every image type the trainer accepts, .txt and .caption captions and kohya N_name folders."""
from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

from PIL import Image

from trainer.data.images import IMAGE_EXTENSIONS
from trainer.data.scan import scan_dataset
from ui import dataset_files as df

PIL_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
              ".jp2": "JPEG2000", ".tga": "TGA", ".ppm": "PPM", ".pgm": "PPM", ".pnm": "PPM", ".avif": "AVIF"}


def image_bytes(ext: str, i: int) -> bytes:
    im = Image.new("RGB", (72 + i, 80), (10 * i % 255, 90, 200 - 5 * i))
    if ext == ".pgm":
        im = im.convert("L")
    buf = io.BytesIO()
    im.save(buf, PIL_FORMAT.get(ext, ext[1:].upper()))
    return buf.getvalue()


def build(root: Path) -> None:
    folders = ["10_zkq", "2_style", "loose"]
    for i, ext in enumerate(sorted(IMAGE_EXTENSIONS)):
        folder = root / folders[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        img = folder / f"pic{i}{ext.upper() if i % 4 == 0 else ext}"  # extensions in either case
        img.write_bytes(image_bytes(ext, i))
        if i % 3 == 0:
            (folder / f"pic{i}.txt").write_text(f"zkq, Tag{i % 2}, shared,\nsecond line", encoding="utf-8")
        elif i % 3 == 1:
            (folder / f"pic{i}.caption").write_bytes(f"zkq, tag{i % 2}, shared, shared".encode("utf-16"))
    (root / "10_zkq" / "both.png").write_bytes(image_bytes(".png", 1))
    (root / "10_zkq" / "both.txt").write_text("from the txt")
    (root / "10_zkq" / "both.caption").write_text("from the caption file")
    (root / "10_zkq" / "both_mask.png").write_bytes(image_bytes(".png", 1))  # its loss mask, not an image
    (root / "top.png").write_bytes(image_bytes(".png", 2))  # in the dataset folder itself
    (root / "0_off").mkdir()
    (root / "0_off" / "unused.png").write_bytes(image_bytes(".png", 3))  # repeat 0: not trained
    (root / "loose" / ".hidden.png").write_bytes(image_bytes(".png", 4))
    (root / "loose" / "layers.psd").write_bytes(b"8BPS")
    (root / "loose" / "notes.md").write_text("not an image")
    (root / ".atelier-cache").mkdir()
    (root / ".atelier-cache" / "x.png").write_bytes(image_bytes(".png", 5))


def test_gui_view_and_trainer_scan_agree(tmp_path):
    root = tmp_path / "set"
    build(root)
    scan = scan_dataset(root)
    trained = {it.rel: it for it in scan.items}
    assert len(trained) == len(IMAGE_EXTENSIONS) + 2  # every type the trainer accepts, both.png, top.png

    shown = [p.relative_to(root).as_posix() for p in df.list_images(root)]
    assert sorted(shown) == sorted(trained)
    view = {it.rel: it for it in df.dataset_view(root).items}
    for rel, it in trained.items():
        assert (view[rel].caption, view[rel].repeats, view[rel].folder) == (it.caption, it.repeats, it.folder), rel
        # the editor shows the same caption file (its lines kept; the trainer joins them with a space)
        assert " ".join(df.read_caption(root / rel).split("\n")) == it.caption, rel
    assert trained["10_zkq/both.png"].caption == "from the txt"
    assert trained["10_zkq/both.png"].mask_file == view["10_zkq/both.png"].mask_file == "10_zkq/both_mask.png"

    per_folder = Counter()
    for counts in scan.tag_frequency.values():
        per_folder.update(counts)
    assert dict(df.tag_frequency(root)) == dict(per_folder)
    assert dict(df.tag_frequency(root))["shared"] == len([it for it in scan.items if "shared" in it.caption])

    gui_folders = {f: (r, n) for f, r, n in df.folders(root)}
    for folder, info in scan.folders.items():
        key = "." if folder == root.name else folder
        repeats, n = gui_folders[key]
        assert n == info["img_count"] and (repeats or 1) == info["n_repeats"], folder
    assert gui_folders["0_off"] == (0, 0)

    report = df.doctor_report(root)
    assert report.startswith(f"Dataset doctor: {len(trained)} image(s) will be trained")
    assert "layers.psd" in report  # the trainer's findings, in the GUI's words

    # what the studio accepts at upload is what the trainer reads
    assert set(df.UPLOAD_TYPES) == set(IMAGE_EXTENSIONS) | {".txt", ".caption", ".zip"}
    up = tmp_path / "up"
    up.mkdir()
    files = []
    for i, ext in enumerate(sorted(IMAGE_EXTENSIONS)):
        files.append(up / f"u{i}{ext}")
        files[-1].write_bytes(image_bytes(ext, i))
    rep = df.import_uploads(files, tmp_path / "uploaded")
    assert rep.rejected == [] and len(rep.added) == len(IMAGE_EXTENSIONS)
    assert len(scan_dataset(tmp_path / "uploaded").items) == len(IMAGE_EXTENSIONS)


def test_run_snapshot_keeps_caption_files_the_trainer_reads(tmp_path):
    root = tmp_path / "set"
    build(root)
    n = df.copy_dataset(root, tmp_path / "run" / "dataset")
    copied = {it.rel: it.caption for it in scan_dataset(tmp_path / "run" / "dataset").items}
    assert n == len(copied)
    assert copied == {it.rel: it.caption for it in scan_dataset(root).items}  # .caption files travel too
    assert (tmp_path / "run" / "dataset" / "10_zkq" / "both_mask.png").is_file()  # and masks (masked loss)
