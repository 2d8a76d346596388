"""The Dataset tab's mask painter (an accordion): paint over the picked image the part the loss should count,
saved as its `<stem>_mask.png` sidecar (white = train, black = ignore: trainer/data/masks.py), which the
trainer reads with masked loss on (noise.masked_loss). The brush paints a see-through layer over the picture;
only where the layer is painted is white in the mask. ui/tab_dataset.py places it (`layout`) and wires it
(`wire`) to the image the caption editor has open."""
from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
from PIL import Image

from trainer.data.images import IMAGE_EXTENSIONS, ImageError, load_image
from trainer.data.masks import MASK_SUFFIX, read_mask_file
from trainer.run.atomic import atomic_write_bytes
from ui import dataset_files as df
from ui.paths import UnsafePath

EDIT_SIDE = 768  # the painter shows the picture at most this big; the saved mask is scaled to the image's size
PAINT = (255, 0, 255)  # the brush's colour over the picture (shown half see-through)
HELP = ("Paint the part of the picture the training should learn from (e.g. the character, not the background), "
        "then **Save mask**: it is saved beside the image as `<name>_mask.png` (white = train, black = ignore). "
        "It counts when **Noise & loss → Masked loss** is on for the run. The eraser takes paint away.")


def mask_files(img: Path) -> list[Path]:
    """The sidecar masks of `img` that exist (`<stem>_mask.<any image extension>`)."""
    return [p for p in img.parent.glob(f"{img.stem}{MASK_SUFFIX}.*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.stem == img.stem + MASK_SUFFIX]


def editor_value(img: Path) -> dict:
    """The picture (at most EDIT_SIDE) as the painter's background, its current mask (if any) as the paint layer."""
    picture = load_image(img, "#ffffff").image.convert("RGB")
    full = picture.size
    picture.thumbnail((EDIT_SIDE, EDIT_SIDE), Image.Resampling.LANCZOS)
    layer = np.zeros((picture.height, picture.width, 4), np.uint8)
    existing = mask_files(img)
    if existing:
        mask = read_mask_file(existing[0], full).resize(picture.size, Image.Resampling.BILINEAR)
        painted = np.asarray(mask) >= 128
        layer[painted] = (*PAINT, 128)
    return {"background": np.asarray(picture.convert("RGBA")), "layers": [layer], "composite": None}


def mask_from_layers(value: dict | None, size: tuple[int, int]) -> Image.Image | None:
    """The mask the painted layers give at the image's `size` (white where painted), or None if none is."""
    layers = [np.asarray(x) for x in (value or {}).get("layers") or [] if x is not None]
    layers = [x for x in layers if x.ndim == 3 and x.shape[2] == 4]
    if not layers:
        return None
    painted = np.zeros(layers[0].shape[:2], bool)
    for x in layers:
        if x.shape[:2] == painted.shape:
            painted |= x[:, :, 3] > 0
    if not painted.any():
        return None
    small = Image.fromarray(np.where(painted, 255, 0).astype(np.uint8), "L")
    big = small.resize(size, Image.Resampling.BILINEAR)  # smooth edges, then back to two levels
    return big.point(lambda v: 255 if v >= 128 else 0)


def save_mask(img: Path, value: dict | None) -> str:
    """Write `img`'s `<stem>_mask.png` from the painter (atomically; another sidecar of the image goes)."""
    size = load_image(img, "#ffffff").image.size
    mask = mask_from_layers(value, size)
    if mask is None:
        raise ValueError(f"{img.name}: nothing is painted. Paint the part to train on (or Remove mask to train on "
                         "the whole picture).")
    target = img.with_name(f"{img.stem}{MASK_SUFFIX}.png")
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    atomic_write_bytes(target, buf.getvalue())
    for other in mask_files(img):
        if other != target:
            other.unlink(missing_ok=True)
    share = np.asarray(mask).mean() / 255
    return f"Saved `{target.name}`: {share:.0%} of the picture is trained on."


def remove_mask(img: Path) -> str:
    gone = mask_files(img)
    for p in gone:
        p.unlink(missing_ok=True)
    return f"Removed `{gone[0].name}`: the whole picture is trained on." if gone else f"`{img.name}` has no mask."


def layout(w: SimpleNamespace) -> None:
    with gr.Accordion("Mask (train on part of the picture)", open=False, elem_id="ds-mask"):
        gr.Markdown(HELP)
        with gr.Row():
            w.mask_load = gr.Button("Paint the mask of the picked image", elem_id="ds-mask-load")
            w.mask_save = gr.Button("Save mask", variant="primary", elem_id="ds-mask-save")
            w.mask_remove = gr.Button("Remove mask", elem_id="ds-mask-remove")
        w.mask_editor = gr.ImageEditor(type="numpy", image_mode="RGBA", sources=[], transforms=[], layers=False,
                                       brush=gr.Brush(colors=[(f"rgb{PAINT}", 0.5)], color_mode="fixed",
                                                      default_size=24),
                                       eraser=gr.Eraser(default_size=24), format="png", label="Mask painter",
                                       elem_id="ds-mask-editor", height=560)
        w.mask_msg = gr.Markdown(elem_id="ds-mask-msg")
        w.mask_of = gr.State(None)  # {"ds", "rel"}: the image the painter holds, whatever is picked since


def wire(studio, w: SimpleNamespace, root_of, then_doctor, in_order: dict) -> None:
    """root_of(studio, dataset name) -> its folder; then_doctor(event) chains the dataset doctor."""
    def image_of(ed):
        if not ed or not ed.get("rel"):
            raise gr.Error("Pick an image first (in the gallery or the caption editor).")
        try:
            return df.dataset_image(root_of(studio, ed["ds"]), ed["rel"])
        except (UnsafePath, ValueError, KeyError) as e:
            raise gr.Error(str(e))

    def on_mask_load(ed):
        img = image_of(ed)
        try:
            value = editor_value(img)
        except ImageError as e:
            raise gr.Error(str(e))
        has = "its mask is shown" if mask_files(img) else "it has no mask yet"
        return value, dict(ed), f"Painting `{ed['rel']}` ({has})."

    w.mask_load.click(on_mask_load, w.editing, [w.mask_editor, w.mask_of, w.mask_msg])

    def on_mask_save(held, value):
        img = image_of(held)
        try:
            return save_mask(img, value)
        except (ValueError, ImageError, OSError) as e:
            raise gr.Error(str(e))

    then_doctor(w.mask_save.click(on_mask_save, [w.mask_of, w.mask_editor], w.mask_msg, **in_order))

    def on_mask_remove(held, ed):
        img = image_of(held or ed)
        return remove_mask(img), None

    then_doctor(w.mask_remove.click(on_mask_remove, [w.mask_of, w.editing], [w.mask_msg, w.mask_editor], **in_order))
