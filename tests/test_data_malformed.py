"""Malformed and awkward dataset files, built with Pillow, mixed into a good set: each one must be
normalised with a note or rejected with its name and a reason, and the good ones must still train."""
from __future__ import annotations

import codecs
import io
import struct
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data.images import MAX_PIXELS, ImageError, load_image
from trainer.data.scan import DatasetError, doctor, scan_dataset

W, H = 48, 32  # non-square, so a wrong rotation shows in the size too
QUADRANTS = {"tl": (255, 0, 0), "tr": (0, 255, 0), "bl": (0, 0, 255), "br": (255, 255, 0)}


def upright() -> np.ndarray:
    """Four differently coloured quadrants: only the identity maps every corner onto itself."""
    a = np.zeros((H, W, 3), np.uint8)
    a[: H // 2, : W // 2] = QUADRANTS["tl"]
    a[: H // 2, W // 2:] = QUADRANTS["tr"]
    a[H // 2:, : W // 2] = QUADRANTS["bl"]
    a[H // 2:, W // 2:] = QUADRANTS["br"]
    return a


def stored_for_orientation(d: np.ndarray, o: int) -> np.ndarray:
    """The pixels a camera stores so that EXIF orientation `o` displays `d`, written from the EXIF 2.3
    definitions of where the 0th row and 0th column go (not from Pillow's transpose table)."""
    h, w = d.shape[:2]
    if o == 1:
        return d.copy()
    if o == 2:  # 0th row top, 0th column right
        return d[:, ::-1]
    if o == 3:  # 0th row bottom, 0th column right
        return d[::-1, ::-1]
    if o == 4:  # 0th row bottom, 0th column left
        return d[::-1, :]
    # 5–8 store a w×h picture: S[r, c] for r < w, c < h
    r, c = np.meshgrid(np.arange(w), np.arange(h), indexing="ij")
    if o == 5:  # 0th row left, 0th column top: S[r, c] = D[c, r]
        return d[c, r]
    if o == 6:  # 0th row right, 0th column top: S[r, c] = D[c, w-1-r]
        return d[c, w - 1 - r]
    if o == 7:  # 0th row right, 0th column bottom: S[r, c] = D[h-1-c, w-1-r]
        return d[h - 1 - c, w - 1 - r]
    if o == 8:  # 0th row left, 0th column bottom: S[r, c] = D[h-1-c, r]
        return d[h - 1 - c, r]
    raise ValueError(o)


def save_with_orientation(path: Path, o: int) -> None:
    im = Image.fromarray(np.ascontiguousarray(stored_for_orientation(upright(), o)))
    exif = Image.Exif()
    exif[0x0112] = o
    im.save(path, quality=95, exif=exif.tobytes())


def quadrant_colours(img: Image.Image) -> dict[str, tuple[int, ...]]:
    a = np.asarray(img.convert("RGB")).astype(int)
    h, w = a.shape[:2]
    pts = {"tl": (h // 4, w // 4), "tr": (h // 4, 3 * w // 4), "bl": (3 * h // 4, w // 4),
           "br": (3 * h // 4, 3 * w // 4)}
    return {k: tuple(a[y, x]) for k, (y, x) in pts.items()}


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that claims a huge size, with almost no data: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def jpeg_bytes(colour=(200, 100, 50), size=(96, 80)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def noisy_jpeg_bytes(size=(128, 96), seed=0) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def gradient16() -> np.ndarray:
    return np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))


# Each case: relative path, how to make it, expected severity of its problem (None: used without a problem
# about that file), a reason fragment, and whether the image is used for training.
def build(root: Path) -> list[tuple[str, str | None, str, bool]]:
    cases: list[tuple[str, str | None, str, bool]] = []

    def case(rel: str, severity: str | None, reason: str, used: bool):
        cases.append((rel, severity, reason, used))

    root.mkdir(parents=True, exist_ok=True)
    for i in range(4):  # the good set
        Image.new("RGB", (96 + 16 * i, 80), (40 * i, 120, 200)).save(root / f"good{i}.png")
        (root / f"good{i}.txt").write_text(f"zkq style, good {i}", encoding="utf-8")

    (root / "truncated.jpg").write_bytes(noisy_jpeg_bytes()[:1500])
    case("truncated.jpg", "error", "truncated", False)
    (root / "zero.jpg").write_bytes(b"")
    case("zero.jpg", "error", "empty", False)
    (root / "text.png").write_text("this is not a picture\n", encoding="utf-8")
    case("text.png", "error", "text file", False)
    svg = '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    (root / "vector.svg").write_text(svg, encoding="utf-8")
    case("vector.svg", "error", "SVG", False)
    (root / "svg_renamed.png").write_text(svg, encoding="utf-8")
    case("svg_renamed.png", "error", "SVG", False)
    (root / "page.jpg").write_text("<!DOCTYPE html><html><body>404</body></html>", encoding="utf-8")
    case("page.jpg", "error", "HTML", False)
    (root / "garbage.png").write_bytes(bytes(range(256)) * 8)
    case("garbage.png", "error", "not a readable image", False)
    Image.new("CMYK", (96, 80), (255, 0, 0, 0)).save(root / "cmyk.jpg", quality=95)
    case("cmyk.jpg", "note", "CMYK", True)
    Image.fromarray(gradient16()).save(root / "gray16.png")
    case("gray16.png", "note", "16-bit", True)
    Image.fromarray(gradient16().astype(">u2")).save(root / "gray16b.tif")
    case("gray16b.tif", "note", "16-bit", True)
    pal = Image.new("P", (96, 80), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 48, 80))
    pal.save(root / "palette_alpha.png", transparency=0)
    case("palette_alpha.png", "note", "transparen", True)
    Image.new("RGBA", (96, 80), (0, 0, 0, 0)).save(root / "clear.png")
    case("clear.png", "note", "fully transparent", True)
    Image.new("LA", (96, 80), (0, 128)).save(root / "la.png")
    case("la.png", "note", "composited", True)
    Image.new("L", (96, 80), 90).save(root / "grey.png")
    case("grey.png", "note", "greyscale", True)
    Image.new("1", (96, 80), 1).save(root / "bilevel.png")
    case("bilevel.png", "note", "1-bit", True)
    for o in range(1, 9):
        save_with_orientation(root / f"exif{o}.jpg", o)
        case(f"exif{o}.jpg", "note" if o > 1 else None, f"orientation {o}", True)
    im = Image.fromarray(upright())
    exif = Image.Exif()
    exif[0x0112] = 9
    im.save(root / "exif_bad.jpg", exif=exif.tobytes())
    case("exif_bad.jpg", "note", "not a valid value", True)
    Image.new("RGB", (1, 1), (255, 0, 0)).save(root / "one.png")
    case("one.png", "warning", "tiny", True)
    (root / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    case("bomb.png", "error", "decompression bomb", False)
    (root / "bomb_mid.png").write_bytes(png_claiming(12_000, 12_000))  # between Pillow's two limits
    case("bomb_mid.png", "error", "decompression bomb", False)
    frames = [Image.new("RGB", (96, 80), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    case("anim.gif", "note", "animated", True)
    frames[0].save(root / "anim.webp", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    case("anim.webp", "note", "animated", True)

    Image.new("RGB", (96, 80), (10, 10, 10)).save(root / "latin.png")
    (root / "latin.txt").write_bytes("café, naïve".encode("cp1252"))
    case("latin.txt", "note", "not UTF-8", True)
    Image.new("RGB", (96, 80), (20, 10, 10)).save(root / "wide.png")
    (root / "wide.txt").write_bytes(codecs.BOM_UTF16_LE + "日本, zkq".encode("utf-16-le"))
    case("wide.txt", "note", "UTF-16", True)
    Image.new("RGB", (96, 80), (30, 10, 10)).save(root / "bom.png")
    (root / "bom.txt").write_bytes(codecs.BOM_UTF8 + "zkq, bom".encode("utf-8"))
    case("bom.txt", None, "", True)
    Image.new("RGB", (96, 80), (40, 10, 10)).save(root / "nocap.png")
    case("nocap.png", "warning", "no caption", True)
    Image.new("RGB", (96, 80), (50, 10, 10)).save(root / "blank.png")
    (root / "blank.txt").write_bytes(b"")
    case("blank.txt", "warning", "empty", True)
    Image.new("RGB", (96, 80), (60, 10, 10)).save(root / "lines.png")
    (root / "lines.txt").write_text("zkq\nsecond line\n", encoding="utf-8")
    case("lines.txt", "note", "joined", True)
    Image.new("RGB", (96, 80), (70, 10, 10)).save(root / "twin.png")
    (root / "twin.jpg").write_bytes(jpeg_bytes((70, 10, 10)))
    (root / "twin.txt").write_text("zkq, twin", encoding="utf-8")
    case("twin.png", "warning", "share the name", True)
    case("twin.jpg", None, "", True)
    (root / "zdup.png").write_bytes((root / "good0.png").read_bytes())  # sorts after good0.png
    (root / "zdup.txt").write_text("zkq, dup", encoding="utf-8")
    case("zdup.png", "warning", "same picture as good0.png", True)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 64)
    case(".DS_Store", "note", "system file", False)
    (root / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\x00" * 64)
    case("Thumbs.db", "note", "system file", False)
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._good0.png").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 64)
    case("__MACOSX/", "note", "system folder", False)
    (root / "._good1.png").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 64)
    case("._good1.png", "note", "hidden", False)
    Image.new("RGB", (96, 80), (80, 10, 10)).save(root / "猫の絵.png")
    (root / "猫の絵.txt").write_text("zkq, 猫", encoding="utf-8")
    case("猫の絵.png", None, "", True)
    nfd = unicodedata.normalize("NFD", "café")
    Image.new("RGB", (96, 80), (90, 10, 10)).save(root / f"{nfd}.png")
    (root / f"{unicodedata.normalize('NFC', 'café')}.txt").write_text("zkq, accent", encoding="utf-8")
    case(f"{nfd}.png", None, "", True)
    (root / "gone.png").symlink_to(root / "nowhere.png")
    case("gone.png", "warning", "broken link", False)
    (root / "lonely.txt").write_text("orphan", encoding="utf-8")
    case("lonely.txt", "note", "without an image", False)
    (root / "0_skipped").mkdir()
    Image.new("RGB", (96, 80)).save(root / "0_skipped" / "x.png")
    case("0_skipped/", "warning", "repeat count 0", False)
    (root / "3_cats").mkdir()
    Image.new("RGB", (96, 80), (1, 2, 3)).save(root / "3_cats" / "c.png")
    (root / "3_cats" / "c.caption").write_text("zkq, cat", encoding="utf-8")
    case("3_cats/c.png", None, "", True)
    return cases


@pytest.fixture(scope="module")
def malformed(tmp_path_factory):
    root = tmp_path_factory.mktemp("malformed") / "set"
    cases = build(root)
    return root, cases, scan_dataset(root)


def test_each_malformed_input_is_normalised_with_a_note_or_rejected_with_a_reason(malformed):
    root, cases, scan = malformed
    used = {it.rel for it in scan.items}
    failures = []
    for rel, severity, reason, should_use in cases:
        mine = [p for p in scan.problems if p.file == rel]
        if severity is None:
            if any(p.severity == "error" for p in mine):
                failures.append(f"{rel}: unexpected {mine}")
        elif not any(p.severity == severity and reason.lower() in p.reason.lower() for p in mine):
            failures.append(f"{rel}: expected {severity} containing {reason!r}, got {mine}")
        is_image = not rel.endswith(("/", ".txt", ".DS_Store", ".db")) and not rel.startswith("._")
        if is_image and (rel in used) != should_use:
            failures.append(f"{rel}: used={rel in used}, expected {should_use}")
    assert not failures, "\n".join(failures)
    n_bad = sum(1 for _, sev, _, _ in cases if sev is not None)
    print(f"malformed inputs tried: {n_bad} (of {len(cases)} awkward files)")
    assert n_bad >= 20
    # every error names a file and says why
    for p in scan.errors():
        assert p.file and len(p.reason) > 10


def test_good_files_survive_and_captions_decode(malformed):
    root, _, scan = malformed
    by_rel = {it.rel: it for it in scan.items}
    for i in range(4):
        assert by_rel[f"good{i}.png"].caption == f"zkq style, good {i}"
    assert by_rel["latin.png"].caption == "café, naïve"
    assert by_rel["wide.png"].caption == "日本, zkq"
    assert by_rel["bom.png"].caption == "zkq, bom"  # BOM gone
    assert by_rel["lines.png"].caption == "zkq second line"
    assert by_rel["nocap.png"].caption == "" and by_rel["nocap.png"].caption_file is None
    assert by_rel["twin.png"].caption == by_rel["twin.jpg"].caption == "zkq, twin"
    assert by_rel["猫の絵.png"].caption == "zkq, 猫"
    assert by_rel[unicodedata.normalize("NFD", "café") + ".png"].caption == "zkq, accent"
    assert by_rel["3_cats/c.png"].repeats == 3 and by_rel["3_cats/c.png"].caption == "zkq, cat"
    assert by_rel["exif6.jpg"].width == W and by_rel["exif6.jpg"].height == H  # upright size
    assert not any(it.rel.startswith(("__MACOSX", "0_skipped", ".")) for it in scan.items)
    assert scan.folders["3_cats"] == {"n_repeats": 3, "img_count": 1}
    assert scan.folders["set"]["n_repeats"] == 1
    assert scan.tag_frequency["set"]["zkq style"] == 4
    assert all("/" not in k and not k.startswith(str(root)) for k in scan.folders)


def test_header_only_scan_agrees_on_what_it_can_see(malformed):
    root, _, full = malformed
    quick = scan_dataset(root, check_images=False)
    sizes = {it.rel: (it.width, it.height) for it in full.items}
    assert {it.rel: (it.width, it.height) for it in quick.items if it.rel in sizes} == sizes
    rejected = {p.file for p in quick.errors()}
    assert {"zero.jpg", "text.png", "svg_renamed.png", "bomb.png", "bomb_mid.png", "vector.svg"} <= rejected
    # only a full decode finds a truncated file; training would then reject it by name
    assert "truncated.jpg" in {it.rel for it in quick.items}


def test_doctor_summarises(malformed):
    _, _, scan = malformed
    probs = doctor(scan, resolution=128, max_aspect=2.0)
    assert [p.severity for p in probs] == sorted((p.severity for p in probs),
                                                 key=["error", "warning", "note"].index)
    text = "\n".join(str(p) for p in probs)
    assert "duplicate picture" in text and "tiny image" in text and "no caption" in text
    assert "(a trigger word?)" not in text or "zkq" in text


@pytest.mark.parametrize("o", range(1, 9))
def test_exif_orientation_comes_out_upright(tmp_path, o):
    p = tmp_path / f"o{o}.jpg"
    save_with_orientation(p, o)
    loaded = load_image(p)
    assert loaded.image.size == (W, H)
    got = quadrant_colours(loaded.image)
    for q, want in QUADRANTS.items():
        assert max(abs(a - b) for a, b in zip(got[q], want)) < 40, (o, q, got[q], want)


def test_16bit_gradient_keeps_its_mean(tmp_path):
    g = gradient16()
    for name, arr in (("g.png", g), ("gb.tif", g.astype(">u2"))):
        Image.fromarray(arr).save(tmp_path / name)
        out = np.asarray(load_image(tmp_path / name).image).astype(float)
        assert out.shape == (64, 256, 3)
        assert abs(out.mean() - g.mean() / 257) < 1.0
        assert out.min() == 0 and out.max() == 255
        assert abs(out[:, 128].mean() - 128) < 2  # not clipped to white as a plain convert would


def test_alpha_is_composited_on_the_background_not_black(tmp_path):
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert np.all(np.asarray(load_image(tmp_path / "clear.png").image) == 255)
    Image.new("RGBA", (64, 64), (255, 0, 0, 128)).save(tmp_path / "half.png")
    px = np.asarray(load_image(tmp_path / "half.png").image)[0, 0]
    assert px[0] == 255 and 120 <= px[1] <= 135 and 120 <= px[2] <= 135
    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 32, 64))
    pal.save(tmp_path / "pal.png", transparency=0)
    a = np.asarray(load_image(tmp_path / "pal.png").image)
    assert tuple(a[0, 0]) == (255, 0, 0) and tuple(a[0, 63]) == (255, 255, 255)
    assert tuple(np.asarray(load_image(tmp_path / "clear.png", background="#00ff00").image)[5, 5]) == (0, 255, 0)


def test_cmyk_and_animation_first_frame(tmp_path):
    Image.new("CMYK", (64, 64), (255, 0, 0, 0)).save(tmp_path / "c.jpg", quality=95)
    px = np.asarray(load_image(tmp_path / "c.jpg").image).astype(int)[32, 32]
    assert px[0] < 40 and px[1] > 215 and px[2] > 215  # cyan
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    loaded = load_image(tmp_path / "a.gif")
    assert loaded.frames == 2 and any("animated" in n for n in loaded.notes)
    assert tuple(np.asarray(loaded.image)[10, 10]) == (255, 0, 0)


def test_errors_name_the_file(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "bomb.png")
    assert "bomb.png" in str(e.value) and "decompression bomb" in str(e.value)
    assert 100_000 * 100_000 > MAX_PIXELS
    (tmp_path / "t.jpg").write_bytes(noisy_jpeg_bytes()[:1200])
    with pytest.raises(ImageError, match=r"t\.jpg: truncated"):
        load_image(tmp_path / "t.jpg")


def test_no_usable_image_raises_naming_the_folder(tmp_path):
    root = tmp_path / "only_bad"
    root.mkdir()
    (root / "a.png").write_text("nope")
    (root / "b.jpg").write_bytes(b"")
    with pytest.raises(DatasetError) as e:
        scan_dataset(root)
    assert "only_bad" in str(e.value) and "2 image file(s) found, 2 rejected" in str(e.value)
    assert {p.file for p in e.value.problems} == {"a.png", "b.jpg"}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no images in dataset folder"):
        scan_dataset(empty)
    with pytest.raises(DatasetError, match="not found"):
        scan_dataset(tmp_path / "missing")


def test_doctor_command_runs_as_a_process(malformed, tmp_path):
    import json
    import subprocess
    import sys
    root, _, scan = malformed
    out = subprocess.run([sys.executable, "-m", "trainer", "doctor", str(root), "--json", "--resolution", "128"],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["images"] == scan.num_images
    assert {"file": "bomb.png", "severity": "error"}.items() <= next(
        p for p in report["problems"] if p["file"] == "bomb.png").items()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"")
    out = subprocess.run([sys.executable, "-m", "trainer", "doctor", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 1 and "x.png" in out.stderr and "empty" in out.stderr
