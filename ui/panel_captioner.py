"""The Dataset tab's Captioner: runs `python -m trainer caption` on the picked dataset as a process of its own
(ui.runner.spawn, never a shell), shows its progress, stops it, and finds it again after a page reload: the
job folder <data>/caption-jobs/<dataset>/ (events, pid, exit code, log) is the whole state. Torch-free."""
from __future__ import annotations

import html
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from trainer.caption.events import CaptionView
from trainer.caption.settings import CaptionSettings, to_argv, validate
from trainer.caption.source import HUB_ID
from trainer.config import ConfigError
from trainer.run.folder import EXIT_STATES, FINAL_STATES, RunFolder

from ui.form import _widget
from ui.paths import UnsafePath, inside, safe_name
from ui.runner import process_status, record_exit, spawn
from ui.workspace import Studio

JOBS = "caption-jobs"
STOP_GRACE_S = 60.0  # SIGTERM waits for the image being captioned; then SIGKILL (each caption file is atomic)
# the panel's own widgets for these: a model picker, and a list of images for the selection
OWN = ("model", "selection_file")
HOW_TO_ADD = ("No captioner model found in the models folder. Put one in a folder of its own under `{models}` "
              "(tagger: `model.onnx` + `selected_tags.csv` of a SmilingWolf WD14 model; natural: a BLIP folder "
              "with `config.json`, the weights and the processor's files), or type a hub id "
              "(e.g. `SmilingWolf/wd-vit-tagger-v3`) when online. The README's “Auto-captioning” says more.")


def job_dir(studio: Studio, dataset: str) -> Path:
    return inside(studio.dirs.root / JOBS, safe_name(dataset))


def found_models(studio: Studio) -> list[tuple[str, str]]:
    """(label, path) of every captioner folder in the models folders, one or two levels down."""
    out = []
    for root in studio.model_roots:
        for d in sorted([*root.glob("*/"), *root.glob("*/*/")]):
            if (d / "model.onnx").is_file() and (d / "selected_tags.csv").is_file():
                out.append((f"tagger · {d.relative_to(root)}", str(d)))
            elif (d / "config.json").is_file() and "blip" in (d / "config.json").read_text(errors="replace")[:4000]:
                out.append((f"BLIP · {d.relative_to(root)}", str(d)))
    return out


def _model_arg(studio: Studio, text: str) -> str:
    """A folder inside the models folders, or a hub id; UnsafePath for a path anywhere else."""
    text = (text or "").strip()
    if not text:
        return ""
    try:
        p = studio.model_path(text)
        if p.is_dir():
            return str(p)
    except UnsafePath:
        pass
    if HUB_ID.fullmatch(text) and not text.startswith((".", "/", "~")):
        return text
    raise UnsafePath(f"Captioner model: {text}: not a folder inside "
                     f"{', '.join(str(r) for r in studio.model_roots)} nor a hub id")


def job_state(job: Path) -> tuple[str, CaptionView, str]:
    """(state, the events' fold, why it failed) from the job folder alone; the exit code wins over events."""
    view = CaptionView(job).update()
    pid, alive, exit_info = process_status(job)
    if alive:
        return "running", view, ""
    if exit_info:
        state = EXIT_STATES.get(exit_info.get("code"), "failed")
        if state != "finished" and view.state in ("stopped", "finished"):
            state = view.state
        why = "" if state != "failed" else (view.errors[-1] if view.errors else
                                            f"the captioner exited with code {exit_info.get('code')}")
        if state == "failed" and exit_info.get("code") not in EXIT_STATES:
            tail = RunFolder(job).log_tail(5)
            why += f"\n{tail}" if tail else ""
        return state, view, why
    if view.state in FINAL_STATES:
        return view.state, view, view.errors[-1] if view.state == "failed" and view.errors else ""
    if pid:  # it died while no studio watched it, without a final event
        return "failed", view, "the captioner process ended without reporting"
    return "idle", view, ""


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def progress_html(state: str, view: CaptionView, why: str) -> str:
    pct = 100.0 * view.done / view.total if view.total else (100.0 if state == "finished" else 0.0)
    text = {"idle": "no caption job for this dataset yet", "running": "starting…" if not view.total else
            f"{view.done}/{view.total} · {view.file}"}.get(state, f"{view.done}/{view.total} image(s) done, "
                                                                f"{view.written} caption(s) written")
    d = view.download if state == "running" else None
    if d:  # the model comes from the hub first: its size and how much is here
        done, total = int(d.get("done") or 0), int(d.get("total") or 0)
        pct = 100.0 * done / total if total else 0.0
        text = f"downloading {d.get('model', 'the model')}: {_mb(done)} of {_mb(total)}"
    errs = "".join(f"<li>{html.escape(e)}</li>" for e in view.errors[-20:])
    return (f'<div id="cap-progress" data-state="{state}" data-done="{view.done}" data-total="{view.total}">'
            f'<div class="atelier-bar"><div class="atelier-fill atelier-{state}" style="width:{pct:.1f}%"></div>'
            f'</div><div class="atelier-progress-text"><b>{state}</b> · {html.escape(text)}</div>'
            + (f'<div style="color:#dc2626">{html.escape(why)}</div>' if why else "")
            + (f'<ul id="cap-errors">{errs}</ul>' if errs else "") + "</div>")


def start(studio: Studio, dataset: str, s: CaptionSettings, selection: list[str]) -> str:
    """Launch the captioner on `dataset`; a message for the page."""
    job = job_dir(studio, dataset)
    if job_state(job)[0] == "running":
        raise gr.Error(f"A caption job is already running on {dataset}: wait for it or stop it.")
    root = studio.dirs.dataset_dir(safe_name(dataset))
    if not root.is_dir():
        raise gr.Error(f"Dataset {dataset}: no such dataset yet; upload images first.")
    job.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(job)
    folder.events.unlink(missing_ok=True)  # a new job: its view starts from nothing
    if s.images == "selection":
        if not selection:
            raise gr.Error("Which images = selection: pick the images in “Selection”.")
        (job / "selection.txt").write_text("\n".join(selection) + "\n", encoding="utf-8")
        s = s.model_copy(update={"selection_file": str(job / "selection.txt")})
    args = [studio.python, "-m", "trainer", "caption", str(root), f"--job-dir={job}", *to_argv(s)]
    proc = spawn(args, job)
    threading.Thread(target=record_exit, args=(proc, job), daemon=True, name=f"caption-{dataset}").start()
    trigger = f", trigger word “{s.trigger}” first" if s.trigger.strip() else ""
    return f"Captioning {dataset} ({s.images} images, {s.backend}{trigger})."


def stop(job: Path) -> str:
    pid, alive, _ = process_status(job)
    if not alive or not pid:
        return "No caption job is running."

    def escalate():
        try:
            os.killpg(pid, signal.SIGTERM)  # the captioner stops after the image it is on
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline:
                if not process_status(job)[1]:
                    return
                time.sleep(0.2)
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return

    threading.Thread(target=escalate, daemon=True).start()
    return "Stopping the captioner after the image it is on."


def build(studio: Studio, w: SimpleNamespace, view_of, in_order: dict) -> None:
    """The accordion, inside the Dataset tab; `w` holds the tab's widgets (ds_name, image_pick, rels, outs).
    view_of(name, pick) gives the tab's outputs `w.outs` (its view of the dataset), refreshed once a job ends
    so the new captions show, in the tab's queue `in_order` (after any edit made before it)."""
    defaults = CaptionSettings()
    with gr.Accordion("Captioner", open=False, elem_id="ds-captioner") as panel:
        models = found_models(studio)
        model = gr.Dropdown(choices=models, value=models[0][1] if models else None, allow_custom_value=True,
                            label="Captioner model", elem_id="cap-model",
                            info="A tagger or BLIP folder in the models folder, or a hub id (online).")
        gr.Markdown("" if models else HOW_TO_ADD.format(models=studio.dirs.models), elem_id="cap-how-to-add")
        widgets: dict[str, gr.components.Component] = {}
        fields = [(k, f) for k, f in CaptionSettings.model_fields.items() if k not in OWN]
        # checkboxes in a row of their own, as in the training form: mixed with text fields they get squeezed
        for group in ([kf for kf in fields if kf[1].annotation is not bool],
                      [kf for kf in fields if kf[1].annotation is bool]):
            with gr.Row(equal_height=False):
                for key, finfo in group:
                    widgets[key] = _widget(f"caption.{key}", finfo, finfo.annotation, getattr(defaults, key))
        selection = gr.Dropdown(choices=[], multiselect=True, label="Selection", elem_id="cap-selection",
                                info="With Which images = selection: the images to caption.")
        with gr.Row():
            start_btn = gr.Button("Caption images", variant="primary", elem_id="cap-start")
            stop_btn = gr.Button("Stop", variant="stop", elem_id="cap-stop")
        msg = gr.Markdown(elem_id="cap-msg")
        progress = gr.HTML(elem_id="cap-progress-box")
        seen = gr.State(None)  # [dataset, events read, state] last shown
        ended = gr.State(0)  # how many jobs this page saw end
        timer = gr.Timer(1.0)
    keys = list(widgets)

    def on_caption_start(name, model_text, picked, *values):
        try:
            s = validate({**dict(zip(keys, values)), "model": _model_arg(studio, model_text)})
            message = start(studio, name, s, list(picked or []))
        except (ConfigError, UnsafePath) as e:
            raise gr.Error(str(e))
        # the page has seen this job start: the timer starts with the panel's first opening, and a job on a
        # few images can end before its first tick, whose end must still refresh the tab
        return message, [name, -1, "starting"]

    start_btn.click(on_caption_start, [w.ds_name, model, selection, *widgets.values()], [msg, seen])
    def on_caption_stop(name):
        return stop(job_dir(studio, name))

    stop_btn.click(on_caption_stop, w.ds_name, msg)

    def on_caption_tick(name, last, ended):
        try:
            job = job_dir(studio, name)
        except UnsafePath:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        state, view, why = job_state(job)
        key = [name, view.count, state]
        if key == last:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        # a job has just ended: bump `ended`, whose change refreshes the tab's view of the dataset once
        # (a short job can start and end between two ticks: any new end seen on this dataset counts)
        just_ended = last is not None and last[0] == name and state in FINAL_STATES
        return (progress_html(state, view, why), key, (ended or 0) + 1 if just_ended else gr.skip(),
                gr.Accordion(open=True) if state == "running" else gr.skip())  # a reloaded page shows a running job

    timer.tick(on_caption_tick, [w.ds_name, seen, ended], [progress, seen, ended, panel], show_progress="hidden")
    ended.change(view_of, [w.ds_name, w.image_pick], w.outs, show_progress="hidden", **in_order)
    # the images a selection can name: the dataset's, in the tab's order (its `rels` follow every change)
    w.rels.change(lambda order: gr.update(choices=list(order or []), value=[]), w.rels, selection,
                  show_progress="hidden")
