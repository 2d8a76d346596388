"""Dataset tab: upload images or a zip, edit captions, bulk caption tools, repeats per folder, doctor."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from ui import dataset_files as df
from ui.workspace import Studio
from ui.paths import UnsafePath, safe_name


def dataset_names(studio: Studio) -> list[str]:
    return sorted(p.name for p in studio.dirs.datasets.iterdir() if p.is_dir() and not p.name.startswith("."))


def build(studio: Studio) -> dict:
    names = dataset_names(studio)
    with gr.Row():
        ds_name = gr.Dropdown(choices=names, value=names[0] if names else "my-dataset", allow_custom_value=True,
                              label="Dataset", info="Pick one, or type a new name (letters, digits, - and _).",
                              elem_id="ds-name", scale=3)
        ds_folder = gr.Textbox(value=df.LOOSE_FOLDER, label="Upload into folder",
                               info="Folder of this dataset; name it N_concept to repeat its images N times.",
                               elem_id="ds-folder", scale=2)
    upload = gr.File(file_count="multiple", label="Images (.png .jpg .webp .bmp), captions (.txt) or a .zip",
                     file_types=sorted(df.IMAGE_EXTS | df.CAPTION_EXTS | {".zip"}), elem_id="ds-upload")
    import_report = gr.Markdown(elem_id="ds-import-report")
    doctor_md = gr.Markdown(elem_id="ds-doctor")
    with gr.Row():
        gallery = gr.Gallery(label="Images", columns=6, height=320, allow_preview=False, elem_id="ds-gallery", scale=3)
        with gr.Column(scale=2):
            image_pick = gr.Dropdown(label="Image", choices=[], elem_id="ds-image")
            caption = gr.Textbox(label="Caption", lines=3, elem_id="ds-caption")
            save_caption = gr.Button("Save caption", elem_id="ds-save-caption")
            caption_msg = gr.Markdown(elem_id="ds-caption-msg")
    with gr.Accordion("Bulk caption tools", open=False):
        with gr.Row():
            op = gr.Dropdown([("Add trigger word first", "trigger"), ("Prefix", "prefix"), ("Suffix", "suffix"),
                              ("Find / replace", "replace")], value="trigger", label="Tool", elem_id="ds-bulk-op")
            a = gr.Textbox(label="Text / trigger / find", elem_id="ds-bulk-a")
            b = gr.Textbox(label="Replace with", elem_id="ds-bulk-b")
            apply_btn = gr.Button("Apply to all captions", elem_id="ds-bulk-apply")
        bulk_msg = gr.Markdown()
        tags = gr.Dataframe(headers=["tag", "count"], label="Tag frequency", interactive=False, elem_id="ds-tags")
    with gr.Accordion("Repeats per folder", open=False):
        folders_df = gr.Dataframe(headers=["folder", "repeats", "images"], interactive=False, label="Folders")
        with gr.Row():
            folder_pick = gr.Dropdown(label="Folder", choices=[])
            repeats = gr.Number(value=1, precision=0, minimum=1, maximum=1000, label="Repeats")
            repeats_btn = gr.Button("Set repeats")
        repeats_msg = gr.Markdown()

    def _root(name: str) -> Path:
        return studio.dirs.dataset_dir(safe_name(name, "my-dataset"))

    def refresh(name: str, pick: str | None = None):
        root = _root(name)
        images = df.list_images(root)
        rels = [str(p.relative_to(root)) for p in images]
        pick = pick if pick in rels else (rels[0] if rels else None)
        cap = df.read_caption(root / pick) if pick else ""
        fl = df.folders(root) if root.exists() else []
        return (gr.update(value=[(str(p), str(p.relative_to(root))) for p in images[:200]]),
                gr.update(choices=rels, value=pick), cap,
                [list(t) for t in df.tag_frequency(root)[:100]] or None,
                [[f, r if r is not None else "(config)", n] for f, r, n in fl] or None,
                gr.update(choices=[f for f, _, _ in fl], value=fl[0][0] if fl else None))

    outs = [gallery, image_pick, caption, tags, folders_df, folder_pick]

    def on_upload(files, name, folder):
        safe = safe_name(name, "my-dataset")
        root = _root(safe)
        root.mkdir(parents=True, exist_ok=True)
        paths = [f if isinstance(f, str) else getattr(f, "name", f) for f in files or []]
        rep = df.import_uploads(paths, root, studio.limits, folder or df.LOOSE_FOLDER)
        doc = df.doctor_report(root) if rep.added else ""
        return (gr.update(choices=dataset_names(studio), value=safe), rep.summary(), doc, *refresh(safe), None)

    upload.upload(on_upload, [upload, ds_name, ds_folder], [ds_name, import_report, doctor_md, *outs, upload])
    ds_name.change(lambda n: refresh(n), ds_name, outs)

    def on_pick(name, pick):
        try:
            from ui.paths import inside
            return df.read_caption(inside(_root(name), pick)) if pick else ""
        except UnsafePath as e:
            raise gr.Error(str(e))

    image_pick.change(on_pick, [ds_name, image_pick], caption)

    def on_gallery_select(name, evt: gr.SelectData):
        # the gallery's captions are the images' relative paths: clicking one opens its caption
        rels = [str(p.relative_to(_root(name))) for p in df.list_images(_root(name))]
        return rels[evt.index] if isinstance(evt.index, int) and evt.index < len(rels) else gr.skip()

    gallery.select(on_gallery_select, ds_name, image_pick)

    def on_save(name, pick, text):
        from ui.paths import inside
        if not pick:
            return "Pick an image first.", gr.skip()
        try:
            img = inside(_root(name), pick)
        except UnsafePath as e:
            raise gr.Error(str(e))
        if not img.is_file() or img.suffix.lower() not in df.IMAGE_EXTS:
            raise gr.Error(f"{pick}: not an image of this dataset")
        df.write_caption(img, text)
        return f"Saved caption of `{pick}`.", [list(t) for t in df.tag_frequency(_root(name))[:100]] or None

    save_caption.click(on_save, [ds_name, image_pick, caption], [caption_msg, tags])

    def on_bulk(name, op_, a_, b_, pick):
        try:
            n = df.bulk_edit(_root(name), op_, a_, b_)
        except ValueError as e:
            raise gr.Error(str(e))
        return f"Changed {n} caption(s).", *refresh(name, pick)

    apply_btn.click(on_bulk, [ds_name, op, a, b, image_pick], [bulk_msg, *outs])

    def on_repeats(name, folder, n):
        try:
            new = df.set_repeats(_root(name), folder, int(n or 1))
        except (ValueError, OSError) as e:
            raise gr.Error(str(e))
        return f"Folder is now `{new}`.", *refresh(name)

    repeats_btn.click(on_repeats, [ds_name, folder_pick, repeats], [repeats_msg, *outs])
    return {"ds_name": ds_name, "refresh": refresh, "outs": outs}
