"""Caption files: reading them whatever their encoding, and the per-step shuffle/dropout."""
from __future__ import annotations

import codecs
import random
from pathlib import Path


def split_tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def decode_caption_bytes(raw: bytes) -> tuple[str, str | None]:
    """(text, note). UTF-8 (BOM or not) and UTF-16 with a BOM are read as such; anything else that is not
    UTF-8 was almost always written by a Windows editor, so it is read as Windows-1252 (Latin-1 for the
    five bytes 1252 leaves undefined) and said so."""
    if raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8):].decode("utf-8", errors="replace"), None
    if raw.startswith(codecs.BOM_UTF16_LE) or raw.startswith(codecs.BOM_UTF16_BE):
        try:
            return raw.decode("utf-16"), "caption is UTF-16; read as such"
        except UnicodeDecodeError:
            return raw.decode("utf-16", errors="replace"), "caption is UTF-16 with invalid bytes; those were replaced"
    # UTF-16 without a BOM: every other byte is zero for Latin text (text captions never hold NULs)
    if len(raw) >= 4 and len(raw) % 2 == 0:
        for zeros, codec in ((raw[1::2], "utf-16-le"), (raw[0::2], "utf-16-be")):
            if zeros.count(0) > len(raw) // 4:
                try:
                    return raw.decode(codec), f"caption looks like UTF-16 without a BOM; read as {codec.upper()}"
                except UnicodeDecodeError:
                    pass
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252"), "caption is not UTF-8; read as Windows-1252 (Latin-1); save it as UTF-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "caption is not UTF-8; read as Latin-1; save it as UTF-8"


def read_caption(path: Path) -> tuple[str, list[str]]:
    """(caption, notes). Lines are joined with a space so no part of a multi-line caption is lost."""
    text, note = decode_caption_bytes(Path(path).read_bytes())
    notes = [note] if note else []
    text = text.replace("\x00", "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1:
        notes.append(f"caption has {len(lines)} lines; joined into one")
    return " ".join(lines), notes


def process_caption(caption: str, shuffle: bool, keep_tokens: int, dropout: float, rng: random.Random) -> str:
    """The caption a training step sees: dropped to "" with probability `dropout`, else (when `shuffle`)
    its comma-separated tags shuffled, the first `keep_tokens` tags (e.g. the trigger word) kept in front.
    Callers seed `rng` per (seed, epoch, sample) so a resumed run sees the same captions."""
    drop = rng.random() < dropout if dropout > 0 else False
    if drop:
        return ""
    if not shuffle:
        return caption
    tags = split_tags(caption)
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(tail)
    return ", ".join(head + tail)
