"""Dataset tab: the picked image's crop box and focus point (its `<stem>.crop.json`, trainer.data.crops). Click
the picture to set the focus point, move four sliders for the box, see what the trainer will be shown at a
resolution (the other dataset settings at their defaults), then Save (atomic) or Clear. The file work is here
and torch-free; the trainer's own reader and placement decide what is valid and what is trained, so the
preview is the trainer's answer."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
from PIL import Image, ImageDraw

from trainer.config import DatasetSection
from trainer.data.buckets import Buckets
from trainer.data.crops import Crop, CropError, crop_file_name, crop_json, parse_crop, read_crop
from trainer.data.images import ImageError, load_image
from trainer.run.atomic import atomic_write_text
from ui import dataset_files as df
from ui.paths import UnsafePath

FULL_BOX = (0.0, 0.0, 1.0, 1.0)
SHOWN_SIDE = 768  # the clickable picture's longest side


def crop_path(root: Path, rel: str) -> Path:
    img = df.dataset_image(root, rel)
    return img.with_name(crop_file_name(img.name))


def load_crop(root: Path, rel: str) -> tuple[Crop | None, str]:
    """(the image's crop, or None without a usable one; a sentence about it)."""
    path = crop_path(root, rel)
    if not path.is_file():
        return None, "No crop file: the whole picture is trained, centre-cropped to its bucket."
    try:
        return read_crop(path), f"`{path.name}` in use."
    except CropError as e:
        return None, f"`{path.name}` cannot be used ({e.reason}): the image trains uncropped until you save or clear."
    except OSError as e:
        return None, f"`{path.name}` cannot be read: {e.strerror or e}"


def make_crop(box, use_focus: bool, fx: float, fy: float) -> Crop:
    """The crop the controls describe, checked by the trainer's reader (CropError with the reason)."""
    box = tuple(float(v) for v in box)
    doc = {}
    if box != FULL_BOX:
        doc["box"] = box
    if use_focus:
        doc["focus"] = (float(fx), float(fy))
    if not doc:
        return Crop()
    return parse_crop(Path("crop"), crop_json(Crop(**doc)).encode())


def save_crop(root: Path, rel: str, crop: Crop) -> str:
    """Write (or, for an empty crop, remove) the image's crop file; returns what happened."""
    path = crop_path(root, rel)
    if crop.box is None and crop.focus is None:
        return clear_crop(root, rel)
    atomic_write_text(path, crop_json(crop))
    return f"Saved `{path.name}`."


def clear_crop(root: Path, rel: str) -> str:
    path = crop_path(root, rel)
    if path.is_file():
        path.unlink()
        return f"Removed `{path.name}`: the whole picture is trained."
    return "No crop file to remove."


def marked_picture(root: Path, rel: str, crop: Crop) -> Image.Image:
    """The upright picture at most SHOWN_SIDE px with the box outlined and the focus point crossed."""
    im = load_image(df.dataset_image(root, rel)).image
    im.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
    w, h = im.size
    draw = ImageDraw.Draw(im)
    x0, y0, x1, y1 = crop.box or FULL_BOX
    if crop.box is not None:
        draw.rectangle((x0 * w, y0 * h, x1 * w - 1, y1 * h - 1), outline=(255, 40, 40), width=3)
    if crop.focus is not None:
        fx, fy = crop.focus[0] * w, crop.focus[1] * h
        for colour, width in (((0, 0, 0), 5), ((255, 220, 0), 2)):
            draw.line((fx - 12, fy, fx + 12, fy), fill=colour, width=width)
            draw.line((fx, fy - 12, fx, fy + 12), fill=colour, width=width)
    return im


def trainer_view(root: Path, rel: str, crop: Crop, settings: DatasetSection) -> tuple[Image.Image, str]:
    """What the trainer is shown with these dataset settings, and the sizes."""
    im = load_image(df.dataset_image(root, rel), settings.background).image
    out, p = Buckets.of(settings).apply(im, crop.box, crop.focus)
    return out, f"Trained at {p.bucket[0]}×{p.bucket[1]} from {p.original[0]}×{p.original[1]} px."


def _controls(crop: Crop | None) -> list:
    crop = crop or Crop()
    box = crop.box or FULL_BOX
    focus = crop.focus or (0.5, 0.5)
    return [*box, crop.focus is not None, *focus]


def build(studio, w: SimpleNamespace, root_of, then_doctor) -> None:
    """The panel, laid out where it is called (the end of the Dataset tab) and wired to the picked image."""
    layout(w)
    wire(studio, w, root_of, then_doctor)


def layout(w: SimpleNamespace) -> None:
    w.crop_open = gr.State(False)  # the pictures are drawn only while the panel is open: decoding costs
    with gr.Accordion("Crop and focus point", open=False, elem_id="ds-crop") as w.crop_panel:
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                w.crop_pic = gr.Image(type="pil", interactive=False, label="Click to set the focus point",
                                      height=420, elem_id="ds-crop-pic")
            with gr.Column(scale=2):
                w.crop_seen = gr.Image(type="pil", interactive=False, label="What the trainer sees", height=260,
                                       elem_id="ds-crop-seen")
                w.crop_res = gr.Number(value=512, precision=0, minimum=64, maximum=4096, step=64,
                                       label="At resolution", elem_id="ds-crop-res")
        with gr.Row():
            w.crop_x0 = gr.Slider(0, 1, value=0, step=0.01, label="Box left", elem_id="ds-crop-x0")
            w.crop_y0 = gr.Slider(0, 1, value=0, step=0.01, label="Box top", elem_id="ds-crop-y0")
            w.crop_x1 = gr.Slider(0, 1, value=1, step=0.01, label="Box right", elem_id="ds-crop-x1")
            w.crop_y1 = gr.Slider(0, 1, value=1, step=0.01, label="Box bottom", elem_id="ds-crop-y1")
        with gr.Row():
            w.crop_use_focus = gr.Checkbox(label="Focus point", value=False, elem_id="ds-crop-use-focus")
            w.crop_fx = gr.Slider(0, 1, value=0.5, step=0.001, label="Focus x", elem_id="ds-crop-fx")
            w.crop_fy = gr.Slider(0, 1, value=0.5, step=0.001, label="Focus y", elem_id="ds-crop-fy")
        with gr.Row():
            w.crop_save = gr.Button("Save crop", variant="primary", elem_id="ds-crop-save", size="sm")
            w.crop_clear = gr.Button("Clear crop", elem_id="ds-crop-clear", size="sm")
        w.crop_msg = gr.Markdown(elem_id="ds-crop-msg")


def wire(studio, w: SimpleNamespace, root_of, then_doctor) -> None:
    """root_of(studio, dataset name) -> the dataset folder (tab_dataset's _root)."""
    values = [w.crop_x0, w.crop_y0, w.crop_x1, w.crop_y1, w.crop_use_focus, w.crop_fx, w.crop_fy]
    shown = [w.crop_pic, w.crop_seen, w.crop_msg]
    crop_draw, crop_on_pick, crop_on_click = _view_handlers(studio, root_of)
    crop_on_save, crop_on_clear = _file_handlers(studio, root_of, crop_draw)

    def crop_opened() -> bool:
        return True

    def crop_closed() -> bool:
        return False

    ins = [w.ds_name, w.image_pick, w.crop_res]
    w.image_pick.change(crop_on_pick, [*ins, w.crop_open], [*values, *shown], show_progress="hidden")
    w.crop_panel.expand(crop_opened, None, w.crop_open).then(crop_on_pick, [*ins, w.crop_open], [*values, *shown])
    w.crop_panel.collapse(crop_closed, None, w.crop_open)
    w.crop_pic.select(crop_on_click, [*ins, *values], [w.crop_use_focus, w.crop_fx, w.crop_fy, *shown],
                      show_progress="hidden")
    for control in (w.crop_x0, w.crop_y0, w.crop_x1, w.crop_y1, w.crop_fx, w.crop_fy):
        control.release(crop_draw, [*ins, *values], shown, show_progress="hidden")
    for control in (w.crop_use_focus, w.crop_res):
        control.input(crop_draw, [*ins, *values], shown, show_progress="hidden")
    then_doctor(w.crop_save.click(crop_on_save, [*ins, *values], shown))
    then_doctor(w.crop_clear.click(crop_on_clear, ins, [*values, *shown]))


def _view_handlers(studio, root_of) -> tuple:
    """(crop_draw, crop_on_pick, crop_on_click): the pictures drawn for the controls, the picked image's crop
    file read into the controls, a click on the picture made the focus point."""
    def crop_draw(name, rel, res, x0, y0, x1, y1, use_focus, fx, fy, msg=""):
        if not rel:
            return None, None, ""
        try:
            root = root_of(studio, name)
            crop = make_crop((x0, y0, x1, y1), use_focus, fx, fy)
            seen, size = trainer_view(root, rel, crop, DatasetSection(resolution=int(res or 512)))
            return marked_picture(root, rel, crop), seen, " ".join(x for x in (msg, size) if x)
        except CropError as e:  # e.g. a box dragged inside out: the last good pictures stay
            return gr.update(), gr.update(), f"This crop cannot be used: {e.reason}"
        except (ImageError, UnsafePath, ValueError, OSError) as e:
            return None, None, str(e)

    def crop_on_pick(name, rel, res, is_open):
        if not rel:
            return [*_controls(None), None, None, ""]
        try:
            crop, msg = load_crop(root_of(studio, name), rel)
        except (UnsafePath, ValueError) as e:
            return [*_controls(None), None, None, str(e)]
        vals = _controls(crop)
        if not is_open:
            return [*vals, None, None, msg]
        return [*vals, *crop_draw(name, rel, res, *vals, msg=msg)]

    def crop_on_click(name, rel, res, x0, y0, x1, y1, _use, _fx, _fy, evt: gr.SelectData):
        if not rel or not evt.index:  # a click beside the picture (inside its frame) selects nothing
            return [gr.update()] * 6
        try:
            pic_w, pic_h = _shown_size(root_of(studio, name), rel)
        except (ImageError, UnsafePath, ValueError, OSError) as e:
            return [gr.update()] * 5 + [str(e)]
        fx = min(1.0, max(0.0, (evt.index[0] + 0.5) / pic_w))
        fy = min(1.0, max(0.0, (evt.index[1] + 0.5) / pic_h))
        return [True, fx, fy, *crop_draw(name, rel, res, x0, y0, x1, y1, True, fx, fy)]

    return crop_draw, crop_on_pick, crop_on_click


def _file_handlers(studio, root_of, crop_draw) -> tuple:
    """(crop_on_save, crop_on_clear): the controls written as the image's crop file, or the file removed; the
    pictures drawn again after either."""
    def crop_on_save(name, rel, res, *vals):
        if not rel:
            return crop_draw(name, rel, res, *vals)
        try:
            msg = save_crop(root_of(studio, name), rel, make_crop(vals[:4], *vals[4:]))
        except CropError as e:
            return gr.update(), gr.update(), f"Not saved: {e.reason}"
        except (UnsafePath, ValueError, OSError) as e:
            return None, None, f"Not saved: {e}"
        return crop_draw(name, rel, res, *vals, msg=msg)

    def crop_on_clear(name, rel, res):
        if not rel:
            return [*_controls(None), None, None, ""]
        try:
            msg = clear_crop(root_of(studio, name), rel)
        except (UnsafePath, ValueError, OSError) as e:
            return [*_controls(None), None, None, str(e)]
        vals = _controls(None)
        return [*vals, *crop_draw(name, rel, res, *vals, msg=msg)]

    return crop_on_save, crop_on_clear


def _shown_size(root: Path, rel: str) -> tuple[int, int]:
    """The clickable picture's size (marked_picture's): the upright size fitted into SHOWN_SIDE."""
    im = load_image(df.dataset_image(root, rel)).image
    im.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
    return im.size
