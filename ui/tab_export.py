"""Export tab: download the adapter (resolved from the run id), edit its metadata, check compatibility,
build the Civitai bundle."""
from __future__ import annotations

import html
import json
from types import SimpleNamespace

import gradio as gr

from trainer.formats.safetensors_io import SafetensorsError, read_header
from trainer.formats.verdicts import verdict_html
from trainer.run.events import run_view

from ui.workspace import Studio
from ui.export_bundle import (adapter_path, build_bundle, checkpoint_adapters, chosen_source, edited_card_fields,
                              run_config, suggestion, write_choice)
from ui.paths import UnsafePath, inside
from ui.trainer_cli import run_trainer


def _adapter(studio: Studio, run_id: str):
    if not run_id or not studio.store.get(run_id):
        raise gr.Error("Pick a run.")
    try:
        p = adapter_path(studio.run_dir(run_id))
    except (UnsafePath, OSError, ValueError) as e:
        raise gr.Error(str(e))
    if p is None:
        raise gr.Error(f"Run {run_id} has no adapter yet.")
    return p


def adapter_info(run_dir) -> str:
    """The label above the buttons: the file that Download and the bundle give now, with its own title and
    trigger words (read from the file, so it follows metadata edits)."""
    p = adapter_path(run_dir)
    if p is None:
        return "No adapter yet."
    try:
        meta = read_header(p).metadata
    except SafetensorsError as e:
        return f"Adapter: `{p.relative_to(run_dir)}`: unreadable ({e})"
    text = f"Adapter: `{p.relative_to(run_dir)}` ({p.stat().st_size / 1024:.0f} KB)"
    if meta.get("modelspec.title"):
        text += f" · title **{meta['modelspec.title']}**"
    if meta.get("modelspec.trigger_phrase"):
        text += f" · trigger words `{meta['modelspec.trigger_phrase']}`"
    return text


def checkpoint_picker(run_dir) -> tuple:
    """The checkpoint dropdown (every saved file, the suggested one marked) and the suggestion's reason."""
    saved = list(reversed(checkpoint_adapters(run_dir)))  # newest first
    if not saved:
        return gr.update(choices=[], value=None), ""
    rel = lambda p: str(p.relative_to(run_dir))  # noqa: E731
    s = suggestion(run_dir)
    picked = s.pick.adapter if s.pick else None
    choices = [(a.label + (" · suggested" if rel(a.path) == picked else ""), rel(a.path)) for a in saved]
    source = chosen_source(run_dir)
    text = f"**Suggested:** {html.escape(s.reason)}" if s.pick else f"No suggestion yet. {html.escape(s.reason)}"
    return gr.update(choices=choices, value=rel(source) if source else None), text


def select_run(studio: Studio, run_id: str | None) -> list:
    """Updates for build(...)["select_outputs"] that open `run_id` here (for "Open in Export" from another tab);
    the picker's change event then fills in the label, metadata and thumbnails."""
    return [gr.update(choices=studio.run_choices(), value=run_id)]


def check_report_html(res_code: int, stdout: str, message: str) -> str:
    """The check's per-client verdicts as a table (trainer.formats.verdicts renders the same report the
    CLI prints), the findings folded; the CLI's own message when it gave no report."""
    try:
        data = json.loads(stdout)
    except json.JSONDecodeError:
        text = html.escape((stdout or message).strip()[:4000])
        return f"<p><b>Compatibility: FAIL</b> (the check gave no report)</p><pre>{text}</pre>"
    return verdict_html(data)


def run_check(adapter, python: str) -> str:
    """`python -m trainer check FILE --json`, exactly as a user would run it: no extra flags (a file for a
    custom base names that base itself)."""
    res = run_trainer(["check", str(adapter), "--json"], timeout=300, python=python)  # absolute path: never an option
    return check_report_html(res.code, res.stdout, res.message)


def build(studio: Studio) -> dict:
    w = _layout(studio)
    # the order of these calls is the order the events are registered in (their api names count up in it)
    _wire_run_pick(studio, w)
    _wire_files(studio, w)
    _wire_metadata(studio, w)
    return {"run": w.run, "select_outputs": [w.run]}


def _layout(studio: Studio) -> SimpleNamespace:
    """The tab's widgets: the run and its checkpoint, the buttons with their files and report, the metadata."""
    w = SimpleNamespace()
    with gr.Row():
        # value=None: a preselected first choice would show a run whose details were never filled in
        w.run = gr.Dropdown(choices=studio.run_choices(), value=None, label="Run", elem_id="exp-run", scale=3)
        w.refresh = gr.Button("Refresh runs", scale=1)
    with gr.Row():
        w.ckpt = gr.Dropdown(choices=[], value=None, label="Checkpoint to export", elem_id="exp-ckpt", scale=2,
                             info="Download, the bundle and the metadata editor use this file.")
        w.why = gr.Markdown(elem_id="exp-suggestion")
    w.info = gr.Markdown(elem_id="exp-info")
    with gr.Row():
        w.dl_btn = gr.Button("Download adapter", variant="primary", elem_id="exp-download")
        w.bundle_btn = gr.Button("Build Civitai bundle", elem_id="exp-bundle")
        w.check_btn = gr.Button("Compatibility check", elem_id="exp-check")
    w.files = gr.File(label="Files", file_count="multiple", interactive=False, elem_id="exp-files")
    w.report = gr.HTML(elem_id="exp-report")
    with gr.Accordion("Metadata", open=False):
        w.title = gr.Textbox(label="Title", elem_id="exp-title")
        w.trigger = gr.Textbox(label="Trigger words", elem_id="exp-trigger")
        w.description = gr.Textbox(label="Description", lines=3, elem_id="exp-description")
        w.thumb = gr.Dropdown(label="Thumbnail (a preview of this run)", choices=[])
        w.meta_btn = gr.Button("Save metadata", elem_id="exp-meta-save")
        w.meta_msg = gr.Markdown()
    return w


def fields_of(run_dir):
    """The label and the metadata fields of the file Export gives now."""
    cfg, p = run_config(run_dir), adapter_path(run_dir)
    if p is not None:  # an edited copy's title and trigger words, not the ones the run started with
        cfg = edited_card_fields(cfg, p)
    return adapter_info(run_dir), cfg.saving.title or cfg.saving.output_name, cfg.saving.trigger_phrase, \
        cfg.saving.description


def _wire_run_pick(studio: Studio, w: SimpleNamespace) -> None:
    """The run picker (and its refresh) and the checkpoint picker fill in the label, the fields and thumbnails."""
    w.refresh.click(lambda: gr.update(choices=studio.run_choices()), None, w.run)

    def on_run(run_id):
        if not run_id or not studio.store.get(run_id):
            return gr.update(choices=[], value=None), "", "", "", "", "", gr.update(choices=[])
        run_dir = studio.run_dir(run_id)
        thumbs = [s["path"] for s in run_view(run_dir).adapter_samples() if s.get("path")]
        return (*checkpoint_picker(run_dir), *fields_of(run_dir),
                gr.update(choices=thumbs, value=thumbs[-1] if thumbs else None))

    w.run.change(on_run, w.run, [w.ckpt, w.why, w.info, w.title, w.trigger, w.description, w.thumb])

    def on_ckpt(run_id, rel):
        """The user picked another checkpoint: remembered in the run's export/ folder, label and fields follow."""
        if not run_id or not studio.store.get(run_id) or not rel:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        run_dir = studio.run_dir(run_id)
        if rel not in {str(a.path.relative_to(run_dir)) for a in checkpoint_adapters(run_dir)}:
            raise gr.Error(f"{rel}: not a saved adapter of this run")
        src = chosen_source(run_dir)
        if src is None or rel != str(src.relative_to(run_dir)):
            write_choice(run_dir, adapter=rel)
        return fields_of(run_dir)

    w.ckpt.input(on_ckpt, [w.run, w.ckpt], [w.info, w.title, w.trigger, w.description])


def _wire_files(studio: Studio, w: SimpleNamespace) -> None:
    """Download the adapter, build the bundle, run the compatibility check."""
    def on_download(run_id):
        return [str(_adapter(studio, run_id))]

    w.dl_btn.click(on_download, w.run, w.files)

    def on_bundle(run_id):
        _adapter(studio, run_id)
        return [str(build_bundle(studio.run_dir(run_id)))]

    w.bundle_btn.click(on_bundle, w.run, w.files)

    def on_check(run_id):
        return run_check(_adapter(studio, run_id), studio.python)

    w.check_btn.click(on_check, w.run, w.report)


def _wire_metadata(studio: Studio, w: SimpleNamespace) -> None:
    """Save metadata: an edited copy of the adapter in the run's export/ folder, which Export gives from then on."""
    def on_meta(run_id, t, tw, d, th):
        src = _adapter(studio, run_id)
        run_dir = studio.run_dir(run_id)
        out = run_dir / "export" / f"{run_config(run_dir).saving.output_name}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.stem}.edit.safetensors")
        tmp.unlink(missing_ok=True)
        args = ["meta", str(src), f"--out={tmp}", f"--set=title={t}", f"--set=trigger={tw}",
                f"--set=description={d}"]
        if th:
            try:
                thumb = inside(run_dir, th)
            except (UnsafePath, OSError) as e:
                raise gr.Error(str(e))
            if not thumb.is_file():
                raise gr.Error(f"{th}: not a preview of this run")
            args.append(f"--thumbnail={thumb}")
        res = run_trainer(args, timeout=300, python=studio.python)
        if res.code != 0:
            raise gr.Error(f"metadata edit failed: {res.message}")
        tmp.replace(out)
        write_choice(run_dir, edited_from=str(chosen_source(run_dir).relative_to(run_dir)))
        return f"Saved metadata: downloads now give `{out.name}` with the new title and trigger words."

    # the label follows the file: after an edit it names the edited copy and its new title
    def on_meta_saved(run_id):
        return adapter_info(studio.run_dir(run_id))

    w.meta_btn.click(on_meta, [w.run, w.title, w.trigger, w.description, w.thumb], w.meta_msg).success(
        on_meta_saved, w.run, w.info)
