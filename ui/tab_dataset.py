"""Dataset tab: upload images or a zip, the dataset doctor, the caption editor (thumbnails, the picked image
large beside its caption, previous/next, exclude/delete), bulk caption tools with preview and undo, repeats per
folder, the tag editor (ui/panel_tags.py). The files work is in ui/dataset_files.py; this module lays out widgets
and wires them."""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from ui import dataset_files as df, panel_captioner, panel_masks, panel_tags
from ui.workspace import Studio
from ui.paths import UnsafePath, safe_name
from ui import panel_crop

MAX_GALLERY = 300  # thumbnails on the page; previous/next and the file list reach every image
DEFAULT_NAME = "my-dataset"

# ← / → (outside text fields) and Page Up / Page Down (also while typing a caption) switch images;
# Ctrl/⌘+Enter in the caption saves. Only while the Dataset tab is on screen.
KEYS_JS = """
if (!window.__atelierDatasetKeys) {
  window.__atelierDatasetKeys = true;
  document.addEventListener('keydown', (e) => {
    const btn = (id) => document.querySelector('#' + id);
    const next = btn('ds-next'), prev = btn('ds-prev');
    if (!next || next.offsetParent === null) return;
    const t = e.target || {};
    const typing = t.tagName === 'TEXTAREA' || t.tagName === 'INPUT' || t.isContentEditable;
    const inCaption = !!(t.closest && t.closest('#ds-caption'));
    let go = null;
    if (e.key === 'PageDown' && (!typing || inCaption)) go = next;
    else if (e.key === 'PageUp' && (!typing || inCaption)) go = prev;
    else if (!typing && !e.altKey && !e.ctrlKey && !e.metaKey && e.key === 'ArrowRight') go = next;
    else if (!typing && !e.altKey && !e.ctrlKey && !e.metaKey && e.key === 'ArrowLeft') go = prev;
    else if (inCaption && (e.ctrlKey || e.metaKey) && e.key === 'Enter') go = btn('ds-save-caption');
    if (go) { e.preventDefault(); go.click(); }
  });
}
"""
KEYS_HINT = ("<span style='font-size:13px;color:#6b7280'>Keys: ← → switch images (outside text boxes), "
             "Page Up / Page Down also while typing a caption, Ctrl+Enter saves. Switching images saves your "
             "edit.</span>")


def dataset_names(studio: Studio) -> list[str]:
    return sorted(p.name for p in studio.dirs.datasets.iterdir() if p.is_dir() and not p.name.startswith("."))


def _last_changed(studio: Studio, names: list[str]) -> str:
    """The dataset changed last (its folder or one of its top-level folders)."""
    def changed(name: str) -> float:
        d = studio.dirs.datasets / name
        try:
            return max([d.stat().st_mtime] + [p.stat().st_mtime for p in d.iterdir() if p.is_dir()])
        except OSError:
            return 0.0
    return max(names, key=changed)


def _layout_upload(w: SimpleNamespace, names: list[str]) -> None:
    """Dataset picker, upload box, import report and the doctor's report."""
    with gr.Row():
        w.ds_name = gr.Dropdown(choices=names, value=names[0] if names else DEFAULT_NAME, allow_custom_value=True,
                                label="Dataset", info="Pick one, or type a new name (letters, digits, - and _).",
                                elem_id="ds-name", scale=3)
        w.ds_folder = gr.Textbox(value=df.LOOSE_FOLDER, label="Upload into folder",
                                 info="Folder of this dataset; name it N_concept to repeat its images N times.",
                                 elem_id="ds-folder", scale=2)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            w.upload = gr.File(file_count="multiple", label="Images, captions (.txt, .caption) or a .zip",
                               file_types=df.UPLOAD_TYPES, elem_id="ds-upload", height=110)
            w.import_report = gr.Markdown(elem_id="ds-import-report", max_height=200)
        with gr.Column(scale=3):
            w.doctor_md = gr.Markdown(elem_id="ds-doctor", max_height=240)
    # {"ds", "rel"}: the image whose caption is in the caption box. Kept in the page, not in server state, so
    # it travels with the caption text: an event sent before the previous one's reply still pairs the text
    # with the image it was loaded for (a server-side State had moved on, and saved that text into the next image)
    w.editing = gr.JSON(None, visible=False, elem_id="ds-editing")
    w.rels = gr.State([])  # the dataset's images in gallery order
    # changes when moving to another image saved an edit of the caption box: the doctor then follows (it does
    # not after every step: each event costs the page a copy of its every output, see ui/tab_switch.py)
    w.saved_on_the_way = gr.State(0)
    w.undo = gr.State(None)  # (dataset, CaptionUndo) of the last bulk edit


def _layout_editor(w: SimpleNamespace) -> None:
    """The caption editor: thumbnails, the picked image large, its caption and the buttons beside it."""
    with gr.Row(equal_height=False, elem_id="ds-editor"):
        with gr.Column(scale=4, min_width=300):
            w.gallery = gr.Gallery(label="Images (click one to caption it)", columns=3, height=480,
                                   allow_preview=False, object_fit="cover", interactive=False, fit_columns=False,
                                   elem_id="ds-gallery")
        with gr.Column(scale=5, min_width=360):
            w.big = gr.Image(type="filepath", interactive=False, height=440, show_label=True, label="Image",
                             buttons=["fullscreen"], elem_id="ds-preview")
        with gr.Column(scale=4, min_width=300):
            with gr.Row():
                w.prev_btn = gr.Button("◀ Previous", elem_id="ds-prev", size="sm", min_width=80)
                w.next_btn = gr.Button("Next ▶", elem_id="ds-next", size="sm", min_width=80)
            w.image_pick = gr.Dropdown(label="File", choices=[], show_label=False, container=False,
                                       elem_id="ds-image")
            w.caption = gr.Textbox(label="Caption", lines=7, elem_id="ds-caption",
                                   placeholder="Comma-separated tags or a sentence; put the trigger word first.")
            w.save_caption = gr.Button("Save caption", variant="primary", elem_id="ds-save-caption")
            with gr.Row():
                w.exclude_btn = gr.Button("Exclude from training", elem_id="ds-exclude", size="sm")
                w.delete_btn = gr.Button("Delete…", variant="stop", elem_id="ds-delete", size="sm")
            with gr.Row(visible=False, elem_id="ds-delete-confirm") as w.confirm_row:
                w.confirm_md = gr.Markdown()
                w.delete_yes = gr.Button("Delete for good", variant="stop", elem_id="ds-delete-yes", size="sm")
                w.delete_no = gr.Button("Cancel", elem_id="ds-delete-no", size="sm")
            w.caption_msg = gr.Markdown(elem_id="ds-caption-msg")
            gr.HTML(KEYS_HINT, js_on_load=KEYS_JS, elem_id="ds-keys")


def _layout_tools(w: SimpleNamespace) -> None:
    """Bulk caption tools, excluded images, repeats per folder."""
    with gr.Accordion("Bulk caption tools", open=False, elem_id="ds-bulk"):
        with gr.Row():
            w.op = gr.Dropdown([("Add trigger word first", "trigger"), ("Prefix", "prefix"), ("Suffix", "suffix"),
                                ("Find / replace", "replace")], value="trigger", label="Tool", elem_id="ds-bulk-op")
            w.a = gr.Textbox(label="Text / trigger / find", elem_id="ds-bulk-a")
            w.b = gr.Textbox(label="Replace with", elem_id="ds-bulk-b")
        with gr.Row():
            w.preview_btn = gr.Button("Preview changes", elem_id="ds-bulk-preview")
            w.apply_btn = gr.Button("Apply to all captions", variant="primary", elem_id="ds-bulk-apply")
            w.undo_btn = gr.Button("Undo last bulk edit", elem_id="ds-bulk-undo")
        w.bulk_msg = gr.Markdown(elem_id="ds-bulk-msg")
        w.bulk_table = gr.Dataframe(headers=["image", "caption now", "caption after"], interactive=False, wrap=True,
                                    label="Preview (nothing is written until you apply)", elem_id="ds-bulk-table")
        w.tags = gr.Dataframe(headers=["tag", "images"], label="Tag frequency (as the trainer counts it)",
                              interactive=False, elem_id="ds-tags")
    panel_tags.layout(w)
    with gr.Accordion("Excluded images", open=False, elem_id="ds-excluded"):
        with gr.Row():
            w.excluded_pick = gr.Dropdown(label="Excluded (kept, not trained)", choices=[],
                                          elem_id="ds-excluded-pick", scale=3)
            w.restore_btn = gr.Button("Restore to the dataset", elem_id="ds-restore", scale=1)
    with gr.Accordion("Repeats per folder", open=False):
        w.folders_df = gr.Dataframe(headers=["folder", "repeats", "images"], interactive=False, label="Folders")
        with gr.Row():
            w.folder_pick = gr.Dropdown(label="Folder", choices=[])
            w.repeats = gr.Number(value=1, precision=0, minimum=1, maximum=1000, label="Repeats")
            w.repeats_btn = gr.Button("Set repeats")
        w.repeats_msg = gr.Markdown()
    # every output of _view, in its order
    w.outs = [w.ds_name, w.import_report, w.doctor_md, w.gallery, w.image_pick, w.big, w.caption, w.editing, w.rels,
              w.tags, w.folders_df, w.folder_pick, w.excluded_pick, w.caption_msg]


def _root(studio: Studio, name: str) -> Path:
    return studio.dirs.dataset_dir(safe_name(name, DEFAULT_NAME))


def _tags(root: Path):
    return [list(t) for t in df.tag_frequency(root)[:100]] or None


def _image(root: Path, rel: str | None):
    """(large preview, caption text, label) of one image."""
    if not rel:
        return None, "", "Image"
    big_path, skip = df.preview(root, rel, df.LARGE_SIDE)
    label = f"{rel} · the trainer skips it: {skip}" if skip else rel
    return str(big_path), df.read_caption(root / rel), label


def _autosave(studio: Studio, ed, text) -> str:
    """Save the caption box into the image it belongs to when it was edited; '' when nothing changed."""
    if not ed or not ed.get("rel") or text is None:
        return ""
    try:
        root = _root(studio, ed["ds"])
        img = df.dataset_image(root, ed["rel"])
    except (UnsafePath, ValueError, KeyError):
        return ""  # that image is gone (deleted, excluded, renamed folder): nothing to save into
    if text.strip() == df.read_caption(img):
        return ""
    if "caption" in ed and text.strip() == (ed["caption"] or "").strip():
        # not edited since it was shown: the file changed meanwhile (a caption job, the bulk tools, another
        # page, a text editor), and the box's older text must not overwrite that
        return ""
    df.write_caption(img, text)
    return f"Saved your edit of `{ed['rel']}` before switching."


def _view(studio: Studio, name: str, pick: str | None = None, report: str = "", msg: str = "",
          on_load: bool = False):
    """Every output in `outs`, for dataset `name` with image `pick` open. The doctor decodes every image, so
    it follows in `on_doctor` (chained, or when the image list changes): the page, its gallery and caption
    never wait for it."""
    all_names = dataset_names(studio)
    if on_load and all_names:
        name = _last_changed(studio, all_names)  # a (re)loaded page opens on the dataset worked on last
    safe = safe_name(name, DEFAULT_NAME)
    root = _root(studio, safe)
    view = df.dataset_view(root)
    order = [it.rel for it in view.items]
    pick = pick if pick in order else (order[0] if order else None)
    shown = [it.rel for it in view.items[:MAX_GALLERY]]
    thumbs = [(str(path), f"{Path(rel).name}{' · skipped' if skip else ''}")
              for rel, (path, skip) in zip(shown, df.previews(root, shown, df.THUMB_SIDE))]
    df.prune_previews(root, order)
    big_path, text, label = _image(root, pick)
    fl = df.folders(root)
    subfolders = [f for f, _, _ in fl if f != "."]  # "." (images in the dataset folder itself) has no name
    more = f" (first {MAX_GALLERY} of {len(order)})" if len(order) > MAX_GALLERY else ""
    return (gr.update(choices=all_names, value=safe) if on_load else gr.update(choices=all_names), report,
            _doctor_now(root, run=not order),
            gr.update(value=thumbs, selected_index=order.index(pick) if pick in order[:MAX_GALLERY] else None,
                      label=f"{len(order)} image(s){more}: click one to caption it"),
            gr.update(choices=order, value=pick), gr.update(value=big_path, label=label), text,
            {"ds": safe, "rel": pick, "caption": text} if pick else {"ds": safe, "rel": None}, order, _tags(root),
            [[f, r if r is not None else "(default)", n] for f, r, n in fl] or None,
            gr.update(choices=subfolders, value=subfolders[0] if subfolders else None),
            gr.update(choices=df.excluded_images(root), value=None), msg)


def _doctor_now(root: Path, run: bool) -> str:
    if not root.exists():
        return ""
    return df.cached_doctor_report(root, only_cached=not run) or "Dataset doctor: checking every image…"


def _neighbour(order: list[str], rel: str) -> str | None:
    """The image shown after `rel` leaves the dataset: the next one, else the previous."""
    if rel not in order or len(order) < 2:
        return None
    i = order.index(rel)
    return order[i + 1] if i + 1 < len(order) else order[i - 1]


# events that change what the tab shows run one at a time, in the order they were made: a dataset typed in
# and files dropped at once must not have the empty dataset's view land after the upload's
IN_ORDER = {"concurrency_limit": 1, "concurrency_id": "ds-view"}


def build(studio: Studio) -> dict:
    w = SimpleNamespace()
    _layout_upload(w, dataset_names(studio))
    _layout_editor(w)
    panel_masks.layout(w)
    _layout_tools(w)
    panel_captioner.build(studio, w, lambda name, pick: _view(studio, name, pick), IN_ORDER)

    def on_doctor(name):
        try:
            return _doctor_now(_root(studio, name), run=True)
        except UnsafePath as e:
            return str(e)

    def then_doctor(event) -> None:
        # one doctor at a time: it is CPU-bound, and a later request re-checks whatever changed meanwhile
        event.then(on_doctor, w.ds_name, w.doctor_md, concurrency_limit=1, concurrency_id="ds-doctor",
                   show_progress="hidden")

    def refresh(name: str):
        """The whole tab, when the page loads (ui/studio.py)."""
        return _view(studio, name, on_load=True)

    # also after the page load (ui/studio.py), which fills `rels`, and after an edit saved on the way to another image
    for changed in (w.rels, w.saved_on_the_way):
        changed.change(on_doctor, w.ds_name, w.doctor_md, concurrency_limit=1, concurrency_id="ds-doctor",
                       show_progress="hidden")
    # the order of these calls is the order the events are registered in (their api names count up in it)
    _wire_switch_and_upload(studio, w, then_doctor)
    _wire_caption_editor(studio, w, then_doctor)
    _wire_exclude_delete(studio, w, then_doctor)
    panel_crop.build(studio, w, _root, then_doctor)  # laid out at the tab's end; handler names of its own
    _wire_bulk_tools(studio, w, then_doctor)
    panel_tags.wire(studio, w, SimpleNamespace(root=_root, tags=_tags, autosave=_autosave, then_doctor=then_doctor,
                                               in_order=IN_ORDER))
    panel_masks.wire(studio, w, _root, then_doctor, IN_ORDER)
    return {"ds_name": w.ds_name, "refresh": refresh, "outs": w.outs}


def _wire_switch_and_upload(studio: Studio, w: SimpleNamespace, then_doctor) -> None:
    """Picking another dataset, and files dropped into the upload box."""
    def on_switch(name, ed, text):
        if ed and ed.get("ds") == safe_name(name, DEFAULT_NAME):
            return [gr.skip()] * len(w.outs)  # already showing it (the page load or an upload set the name)
        return _view(studio, name, msg=_autosave(studio, ed, text))

    then_doctor(w.ds_name.change(on_switch, [w.ds_name, w.editing, w.caption], w.outs, **IN_ORDER))

    def on_upload(files, name, folder, ed, text):
        safe = safe_name(name, DEFAULT_NAME)
        root = _root(studio, safe)
        root.mkdir(parents=True, exist_ok=True)
        paths = [f if isinstance(f, str) else getattr(f, "name", f) for f in files or []]
        saved = _autosave(studio, ed, text)
        try:
            rep = df.import_uploads(paths, root, studio.limits, folder or df.LOOSE_FOLDER)
        finally:
            df.discard_uploads(paths, studio.dirs.gradio_tmp)  # refused or copied, the upload is done with
        out = list(_view(studio, safe, ed.get("rel") if ed and ed.get("ds") == safe else None, rep.summary(), saved))
        out[0] = gr.update(choices=dataset_names(studio), value=safe)
        return (*out, None)

    then_doctor(w.upload.upload(on_upload, [w.upload, w.ds_name, w.ds_folder, w.editing, w.caption],
                                [*w.outs, w.upload], **IN_ORDER))


def _wire_caption_editor(studio: Studio, w: SimpleNamespace, then_doctor) -> None:
    """Moving between images (the caption box is saved into the image it belongs to first), saving a caption."""
    step_outs = [w.gallery, w.image_pick, w.big, w.caption, w.editing, w.caption_msg, w.tags, w.saved_on_the_way]
    step_ins = [w.ds_name, w.editing, w.caption, w.rels]

    def go(name, ed, text, target, listed=None):
        """listed: the dataset's images, when the caller has just listed them (df.dataset_view: a stat of each
        file while nothing changed, a new listing when something did)."""
        saved = _autosave(studio, ed, text)
        root = _root(studio, name)
        order = listed or [it.rel for it in df.dataset_view(root).items]  # the files decide, not the page's copy
        after_save = [saved, _tags(root), time.time_ns()] if saved else [gr.skip()] * 3
        if not target or target not in order:
            return [gr.skip()] * (len(step_outs) - 3) + after_save
        big_path, cap, label = _image(root, target)
        return (gr.update(selected_index=order.index(target) if order.index(target) < MAX_GALLERY else None),
                gr.update(value=target), gr.update(value=big_path, label=label), cap,
                {"ds": safe_name(name, DEFAULT_NAME), "rel": target, "caption": cap}, *after_save)

    def on_gallery_select(name, ed, text, order, evt: gr.SelectData):
        target = order[evt.index] if isinstance(evt.index, int) and evt.index < len(order) else None
        if ed and target == ed.get("rel"):
            return [gr.skip()] * len(step_outs)
        return go(name, ed, text, target)

    # moving between images: the doctor follows only an edit saved on the way (w.saved_on_the_way)
    w.gallery.select(on_gallery_select, step_ins, step_outs, **IN_ORDER)

    def on_pick(name, ed, text, order, target):
        try:
            df.dataset_image(_root(studio, name), target) if target else None
        except (UnsafePath, ValueError) as e:
            raise gr.Error(str(e))
        return go(name, ed, text, target)

    w.image_pick.input(on_pick, [*step_ins, w.image_pick], step_outs, **IN_ORDER)

    def stepper(delta: int):
        def on_step(name, ed, text, _shown):
            order = [it.rel for it in df.dataset_view(_root(studio, name)).items]
            if not order:
                return [gr.skip()] * len(step_outs)
            cur = ed.get("rel") if ed else None
            i = order.index(cur) if cur in order else -delta
            return go(name, ed, text, order[(i + delta) % len(order)], order)
        return on_step

    w.prev_btn.click(stepper(-1), step_ins, step_outs, **IN_ORDER)
    w.next_btn.click(stepper(1), step_ins, step_outs, **IN_ORDER)

    def on_save(name, pick, text):
        if not pick:
            return "Pick an image first.", gr.skip(), gr.skip()
        try:
            img = df.dataset_image(_root(studio, name), pick)
        except (UnsafePath, ValueError) as e:
            raise gr.Error(str(e))
        df.write_caption(img, text)
        return (f"Saved caption of `{pick}`.", _tags(_root(studio, name)),
                {"ds": safe_name(name, DEFAULT_NAME), "rel": pick, "caption": df.read_caption(img)})

    then_doctor(w.save_caption.click(on_save, [w.ds_name, w.image_pick, w.caption],
                                     [w.caption_msg, w.tags, w.editing], **IN_ORDER))


def _wire_exclude_delete(studio: Studio, w: SimpleNamespace, then_doctor) -> None:
    """Excluding an image from training, deleting it (after a confirmation), restoring an excluded one."""
    def on_exclude(name, ed, text, order):
        rel = ed.get("rel") if ed else None
        if not rel:
            return _view(studio, name, msg="Pick an image first.")
        saved = _autosave(studio, ed, text)
        try:
            where = df.exclude_image(_root(studio, name), rel)
        except (UnsafePath, ValueError, OSError) as e:
            raise gr.Error(str(e))
        msg = (f"Excluded `{rel}` from training (kept as `{df.EXCLUDED_DIR}/{where}`; restore it under "
               f"“Excluded images”).")
        return _view(studio, name, _neighbour(order, rel), msg=" ".join(x for x in (saved, msg) if x))

    then_doctor(w.exclude_btn.click(on_exclude, [w.ds_name, w.editing, w.caption, w.rels], w.outs, **IN_ORDER))

    def on_delete_ask(ed):
        rel = ed.get("rel") if ed else None
        if not rel:
            return gr.update(visible=False), "", "Pick an image first."
        return gr.update(visible=True), f"Delete `{rel}` and its caption for good?", ""

    w.delete_btn.click(on_delete_ask, w.editing, [w.confirm_row, w.confirm_md, w.caption_msg])
    w.delete_no.click(lambda: (gr.update(visible=False), ""), None, [w.confirm_row, w.confirm_md])

    def on_delete(name, ed, order):
        rel = ed.get("rel") if ed else None
        if not rel:
            return (gr.update(visible=False), *_view(studio, name, msg="Pick an image first."))
        try:
            gone = df.delete_image(_root(studio, name), rel)
        except (UnsafePath, ValueError, OSError) as e:
            raise gr.Error(str(e))
        return (gr.update(visible=False),
                *_view(studio, name, _neighbour(order, rel), msg=f"Deleted {', '.join(gone)}."))

    then_doctor(w.delete_yes.click(on_delete, [w.ds_name, w.editing, w.rels], [w.confirm_row, *w.outs], **IN_ORDER))

    def on_restore(name, rel, ed):
        if not rel:
            return _view(studio, name, ed.get("rel") if ed else None, msg="Pick an excluded image first.")
        try:
            back = df.restore_image(_root(studio, name), rel)
        except (UnsafePath, ValueError, OSError) as e:
            raise gr.Error(str(e))
        return _view(studio, name, back, msg=f"Restored `{back}`: it is trained again.")

    then_doctor(w.restore_btn.click(on_restore, [w.ds_name, w.excluded_pick, w.editing], w.outs, **IN_ORDER))


def _wire_bulk_tools(studio: Studio, w: SimpleNamespace, then_doctor) -> None:
    """Bulk caption tools (preview, apply, undo) and repeats per folder."""
    def on_bulk_preview(name, op_, a_, b_):
        try:
            plan = df.plan_bulk_edit(_root(studio, name), op_, a_, b_)
        except ValueError as e:
            raise gr.Error(str(e))
        msg = (f"{len(plan)} caption(s) would change (first 100 below). Nothing is written until you apply."
               if plan else "No caption would change.")
        return msg, [list(r) for r in plan[:100]] or None

    w.preview_btn.click(on_bulk_preview, [w.ds_name, w.op, w.a, w.b], [w.bulk_msg, w.bulk_table])

    def on_bulk(name, op_, a_, b_, pick, ed=None, text=None):
        saved = _autosave(studio, ed, text)  # an unsaved caption edit is saved before the tool reads the captions
        root = _root(studio, name)
        try:
            plan = df.plan_bulk_edit(root, op_, a_, b_)
        except ValueError as e:
            raise gr.Error(str(e))
        done = df.apply_caption_changes(root, plan)
        msg = f"Changed {len(plan)} caption(s)." + (" “Undo last bulk edit” puts them back." if plan else "")
        view = _view(studio, name, pick, msg=saved)
        last = (safe_name(name, DEFAULT_NAME), done) if plan else gr.skip()
        return (" ".join(x for x in (saved, msg) if x), None, last, *view)

    then_doctor(w.apply_btn.click(on_bulk, [w.ds_name, w.op, w.a, w.b, w.image_pick, w.editing, w.caption],
                                  [w.bulk_msg, w.bulk_table, w.undo, *w.outs], **IN_ORDER))

    def on_undo(name, last, pick):
        if not last:
            return "Nothing to undo.", gr.skip(), *([gr.skip()] * len(w.outs))
        ds, done = last
        try:
            restored, kept = df.undo_caption_changes(_root(studio, ds), done)
        except (UnsafePath, OSError) as e:
            raise gr.Error(str(e))
        msg = f"Undid the last bulk edit on `{ds}`: restored {restored} caption(s)."
        if kept:
            msg += f" Left {len(kept)} alone that were edited since: {', '.join(kept[:5])}."
        return msg, None, *_view(studio, ds, pick if ds == safe_name(name, DEFAULT_NAME) else None)

    then_doctor(w.undo_btn.click(on_undo, [w.ds_name, w.undo, w.image_pick], [w.bulk_msg, w.undo, *w.outs],
                                 **IN_ORDER))

    def on_repeats(name, folder, n):
        try:
            new = df.set_repeats(_root(studio, name), folder, int(n or 1))
        except (ValueError, OSError) as e:
            raise gr.Error(str(e))
        return f"Folder is now `{new}`.", *_view(studio, name)

    then_doctor(w.repeats_btn.click(on_repeats, [w.ds_name, w.folder_pick, w.repeats], [w.repeats_msg, *w.outs],
                                    **IN_ORDER))
