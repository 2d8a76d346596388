"""A labelled comparison grid (PIL only, no torch): one column per strength, one row per adapter
(checkpoint), rows grouped under a heading per prompt when there are several prompts."""
from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

PAD = 8
BG = (255, 255, 255)
INK = (17, 24, 39)
MUTED = (107, 114, 128)


def strength_label(strength: float) -> str:
    """'strength 0.5', 'strength 1.0': the one spelling of the grid's columns (grid image, table, captions)."""
    return f"strength {float(strength)}"


@dataclass
class GridBlock:
    """The rows drawn for one prompt: (row label, one image per column)."""
    heading: str | None
    rows: list[tuple[str, list[Image.Image]]] = field(default_factory=list)


def _font(size: int):
    try:  # Pillow >= 10.1 ships a scalable default font (FreeType)
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text` shortened with '…' until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def compose_grid(blocks: list[GridBlock], col_labels: list[str], cell: int | None = None) -> Image.Image:
    """One image: column labels on top, row labels on the left, a heading line above each prompt's rows.
    Cells are scaled to `cell` pixels (default: the images' own size, at least 128 so labels stay legible)."""
    images = [im for b in blocks for _, row in b.rows for im in row if im is not None]
    if not images or not col_labels:
        raise ValueError("compose_grid: no images")
    cell = cell or max(128, max(max(im.size) for im in images))
    font = _font(max(12, cell // 12))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(font.getbbox("Ag")[3] - font.getbbox("Ag")[1]) + PAD
    row_labels = [label for b in blocks for label, _ in b.rows]
    label_w = min(int(max(probe.textlength(t, font=font) for t in row_labels)) + 2 * PAD, 2 * cell)
    n_cols = len(col_labels)
    width = label_w + n_cols * (cell + PAD) + PAD
    height = line_h + PAD + sum((line_h if b.heading else 0) + len(b.rows) * (cell + PAD) for b in blocks)
    grid = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate(col_labels):
        x = label_w + c * (cell + PAD)
        draw.text((x + cell / 2, PAD), _fit(draw, text, font, cell), fill=INK, font=font, anchor="mt")
    y = line_h + PAD
    for b in blocks:
        if b.heading:
            draw.text((PAD, y), _fit(draw, b.heading, font, width - 2 * PAD), fill=MUTED, font=font)
            y += line_h
        for label, row in b.rows:
            draw.text((PAD, y + cell / 2), _fit(draw, label, font, label_w - 2 * PAD), fill=INK, font=font,
                      anchor="lm")
            for c, im in enumerate(row[:n_cols]):
                if im is not None:
                    grid.paste(im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST
                                                        if max(im.size) < cell else Image.Resampling.LANCZOS),
                               (label_w + c * (cell + PAD), y))
            y += cell + PAD
    return grid
