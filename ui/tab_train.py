"""Train tab: dataset, base model, preset, the generated form, estimate, start/stop/resume/sample/save, and
the live panel. Widgets and wiring only: runs are made and steered by ui/runs.py."""
from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from trainer.config import REPO_ROOT, ConfigError, load_preset, preset_names, read_preset, save_config
from trainer.models.spec import parse_base
from trainer.run.events import run_view

from ui import runs
from ui.workspace import Studio
from ui.form import build_form, config_to_values, values_to_config
from ui.calibration import describe as describe_speed
from ui.live import loss_rows, preview_pairs, progress_html
from ui.paths import UnsafePath, inside, safe_name
from ui.runner import resolve_state
from ui.store import shown_state

BUILTIN_BASES = [("Demo base (bundled shapes model)", "builtin:shapes"), ("Tiny random SD1 (tests)", "tiny:sd1")]
MODEL_SUFFIXES = (".safetensors", ".ckpt")
BUNDLED_DATASETS = runs.BUNDLED_DATASETS
CSS = """
#train-live {position: sticky; top: 4px; align-self: flex-start;}
#train-form-error:not(:empty) {border-left: 4px solid #dc2626; padding-left: 8px;}
"""


def scan_models(root: Path) -> list[tuple[str, str]]:
    """Single-file checkpoints and diffusers folders (model_index.json) in a models folder."""
    found = []
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix in MODEL_SUFFIXES and p.stat().st_size > 0:
                found.append((f"{p.relative_to(root)} ({root.name})", str(p)))
            elif p.is_file() and p.name == "model_index.json":
                found.append((f"{p.parent.relative_to(root)}/ ({root.name})", str(p.parent)))
    return found


def base_choices(studio: Studio) -> list[tuple[str, str]]:
    return BUILTIN_BASES + [c for r in studio.model_roots for c in scan_models(r)]


def check_base(studio: Studio, text: str) -> str:
    text = (text or "").strip()
    if not text:
        raise ConfigError("Base model: pick one")
    try:
        kind = parse_base(text).kind  # the trainer's own grammar (trainer.models.spec)
    except ValueError as e:
        raise ConfigError(f"Base model: {e}") from None
    if kind in ("builtin", "tiny", "random"):
        return text
    try:  # the trainer runs in the repository folder: a relative name there is a path, not a hub id
        in_repo = (REPO_ROOT / text).exists()
    except (OSError, ValueError):  # too long, or a null byte: not a file name
        in_repo = False
    if kind == "hub" and not in_repo:
        return text  # hub id: the trainer downloads (or refuses offline)
    try:
        p = studio.model_path(text)
    except UnsafePath as e:
        raise ConfigError(f"Base model: {e}") from None
    if not p.exists():
        raise ConfigError(f"Base model: {p} does not exist")
    return str(p)


def check_extra_paths(studio: Studio, cfg) -> None:
    """The form's other path fields stay inside the studio's folders too: a VAE and a start-from adapter in
    the models folders (or a run's adapter), regularisation and validation images in the datasets folder or
    among the project's bundled datasets."""
    roots = {"model.vae": studio.model_roots, "network.init_weights": [*studio.model_roots, studio.dirs.runs],
             "dataset.reg_path": [studio.dirs.datasets, BUNDLED_DATASETS],
             "validation.path": [studio.dirs.datasets, BUNDLED_DATASETS]}
    for key, allowed in roots.items():
        section, name = key.split(".")
        text = getattr(getattr(cfg, section), name).strip()
        if not text:
            continue
        p = Path(text).expanduser()
        candidates = []
        for root in allowed:
            for base in ([root, root.parent] if root == BUNDLED_DATASETS else [root]):
                try:
                    candidates.append(inside(root, p if p.is_absolute() else base / p))
                except (UnsafePath, OSError, ValueError):
                    continue
        if not candidates:
            raise ConfigError(f"{key}: {text[:200]} must be inside {', '.join(str(r) for r in allowed)}")
        # an existing folder wins; otherwise the first reading, so the trainer's error names it
        setattr(getattr(cfg, section), name, str(next((c for c in candidates if c.exists()), candidates[0])))


def user_presets(studio: Studio) -> list[str]:
    return sorted(f"user/{p.stem}" for p in studio.dirs.presets.glob("*.toml"))


def preset_path_or_name(studio: Studio, name: str) -> str:
    if name.startswith("user/"):
        return str(studio.dirs.presets / f"{safe_name(name[5:])}.toml")
    if name not in preset_names():
        raise ConfigError(f"preset {name!r} not found")
    return name


def estimate_text(cfg, n_images: int, views: int, dataset: str = "", speed: dict | None = None,
                  speed_note: str = "") -> str:
    """The estimate box: steps, images and epochs said once, then time (training + previews) and memory;
    the time at this machine's measured `speed` when there is one (speed_note says where it comes from)."""
    from trainer.estimate import estimate, format_estimate

    steps = cfg.schedule.max_train_steps
    if not n_images:
        return (f"**No images in {('dataset `' + dataset + '`') if dataset else 'the dataset'}:** add images in "
                f"the Dataset tab or pick another dataset. Training cannot start without them.")
    lines = [f"**{steps} steps** · {n_images} image(s), {views} image view(s) per epoch at batch "
             f"{cfg.dataset.batch_size}" + (" (plus as many regularisation images)" if cfg.dataset.reg_path else "")]
    try:
        est = estimate(cfg, num_images=n_images, num_views=views, speed=speed)
        lines.append(f"{format_estimate(est)} — estimated for {est['family']} on {est['device']}."
                     + (f" {speed_note}" if speed_note and est["device"] == "cpu" else ""))
    except Exception as e:  # an estimate must never block a launch
        lines.append(f"Time/memory estimate unavailable ({e}).")
    from trainer.models.checks import launch_warnings

    lines += [f"⚠ {w}" for w in launch_warnings(cfg)]  # settings that do not fit the base model's file
    return "\n\n".join(lines)


def config_from_form(studio: Studio, keys: list[str], base_value, values):
    """The form's values as a TrainConfig, the base model and other paths checked (ConfigError names the field)."""
    cfg = values_to_config(keys, list(values), {"model.base": check_base(studio, base_value)})
    check_extra_paths(studio, cfg)
    return cfg


def form_problem(studio: Studio, keys: list[str], base_value, values) -> str:
    """'' when the form is valid, else the problem naming each field by its label (shown until fixed)."""
    try:
        config_from_form(studio, keys, base_value, values)
    except ConfigError as e:
        return f"**Fix before training:** {e}"
    return ""


def _layout(studio: Studio) -> SimpleNamespace:
    """The tab's widgets: pickers and names on top, the settings form left, the buttons and live panel right."""
    w = SimpleNamespace()
    with gr.Row():
        w.demo_btn = gr.Button("Try the demo", elem_id="train-demo", scale=1,
                               variant="secondary")
        w.dataset = gr.Dropdown(choices=runs.dataset_choices(studio), value=None, label="Dataset",
                                elem_id="train-dataset", scale=2, info="The images this run trains on.")
        w.base = gr.Dropdown(choices=base_choices(studio), value="builtin:shapes", allow_custom_value=True,
                             label="Base model", elem_id="train-base", scale=3,
                             info="Bundled demo base, a model in your models folder, a path there, or a hub id.")
        w.rescan = gr.Button("Rescan models folder", scale=1)
        w.preset = gr.Dropdown(choices=preset_names() + user_presets(studio), value=None, label="Preset",
                               elem_id="train-preset", scale=2)
    with gr.Row():
        w.run_name = gr.Textbox(value="my-lora", label="Run name", elem_id="train-run-name", scale=2,
                                info="Also the adapter's file name.")
        w.preset_save_name = gr.Textbox(label="Save settings as preset", placeholder="name", scale=2)
        w.save_preset = gr.Button("Save preset", scale=1)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            w.form_error = gr.Markdown(elem_id="train-form-error")
            widgets = build_form()
        with gr.Column(scale=2, elem_id="train-live"):
            _layout_live(w)
    w.keys, w.comps = list(widgets), list(widgets.values())
    w.seen = gr.State(None)
    w.timer = gr.Timer(1.0)
    w.panel = [w.progress, w.problems, w.loss_plot, w.previews, w.run_label, w.saves, w.after_run]
    return w


def _layout_live(w: SimpleNamespace) -> None:
    """Estimate, start and steering buttons, the run's status and its live panel."""
    with gr.Row():
        w.estimate_btn = gr.Button("Estimate", elem_id="train-estimate-btn")
        w.start = gr.Button("Train", variant="primary", elem_id="train-start")
        w.stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
    with gr.Row():
        w.enqueue = gr.Button("Add to queue", elem_id="train-enqueue", size="sm")
        w.save_queued = gr.Button("Save to queued run", elem_id="train-save-queued", size="sm")
    with gr.Row():
        w.sample_now = gr.Button("Sample now", elem_id="train-sample-now", size="sm")
        w.save_now = gr.Button("Save now", elem_id="train-save-now", size="sm")
        w.resume = gr.Button("Resume", elem_id="train-resume", size="sm")
        w.more_steps = gr.Number(value=None, precision=0, label="Train to step", elem_id="train-more-steps",
                                 info="A finished run resumes only to train more: its new total of steps.",
                                 min_width=120)
    w.status = gr.Markdown(elem_id="train-status")
    w.run_label = gr.Markdown(elem_id="train-run-label")
    w.progress = gr.HTML(progress_html("idle", None), elem_id="train-progress-box")
    with gr.Row(visible=False) as w.after_run:
        w.open_generate = gr.Button("Open in Generate", elem_id="train-open-generate", size="sm")
        w.open_export = gr.Button("Open in Export", elem_id="train-open-export", size="sm")
    w.problems = gr.Markdown(elem_id="train-problems")
    w.loss_plot = gr.LinePlot(x="step", y="loss", color="curve", title="Loss (smoothed; raw faint)", height=200,
                              color_map={"smoothed": "#4f46e5", "raw": "#c7d2fe", "validation": "#ea580c"},
                              elem_id="train-loss")
    w.previews = gr.Gallery(label="Previews (base | adapter at the same seed)", columns=2, height=260,
                            elem_id="train-previews")
    w.saves = gr.Markdown(elem_id="train-saves")
    w.estimate_md = gr.Markdown(elem_id="train-estimate")


def build(studio: Studio, ds_name: gr.Dropdown, run_state: gr.State) -> dict:
    w = _layout(studio)
    # the order of these calls is the order the events are registered in (their api names count up in it)
    _wire_settings(studio, w)
    on_dataset_tab_pick, on_datasets_refresh = _wire_dataset_and_estimate(studio, w, ds_name)
    _wire_start(studio, w, run_state)
    _wire_steering(studio, w, run_state)
    _wire_live(studio, w, run_state)
    return {"base": w.base, "preset": w.preset, "dataset": w.dataset, "dataset_default": on_dataset_tab_pick,
            "dataset_refresh": on_datasets_refresh,
            "open_generate": w.open_generate, "open_export": w.open_export}


def _wire_settings(studio: Studio, w: SimpleNamespace) -> None:
    """Presets (load, the demo's, save), the form's live check, rescanning the models folder."""
    keys, comps = w.keys, w.comps

    def on_preset(name):
        if not name:
            return [gr.skip()] * (len(comps) + 4)
        try:
            cfg = load_preset(preset_path_or_name(studio, name))
        except ConfigError as e:
            return [gr.skip()] * (len(comps) + 2) + [f"**Preset error:** {e}", gr.skip()]
        data, about = read_preset(preset_path_or_name(studio, name))  # about: what the preset is for
        own = runs.preset_dataset(cfg)
        ds_update = gr.update(choices=runs.dataset_choices(studio), value=own) if own else gr.skip()
        note = f" It trains on its own dataset `{own}`." if own else ""
        loaded = f"Loaded preset `{name}`" + (f": {about}" if about else ".") + note
        # a family preset names no base: the model the user picked stays
        base = cfg.model.base if "base" in data.get("model", {}) else gr.skip()
        return [*config_to_values(cfg, keys), base, ds_update, loaded, ""]

    w.preset.input(on_preset, w.preset, [*comps, w.base, w.dataset, w.status, w.form_error])

    def on_demo():
        values = on_preset(runs.DEMO["preset"])
        values[len(comps) + 1] = gr.update(choices=runs.dataset_choices(studio), value=runs.DEMO["dataset"])
        values[len(comps) + 2] = ("Demo set: the bundled shapes base learns a stripe pattern called “zkq” from "
                                  "the bundled images. Press **Train**.")
        return [runs.DEMO["preset"], runs.DEMO["name"], *values]

    w.demo_btn.click(on_demo, None, [w.preset, w.run_name, *comps, w.base, w.dataset, w.status, w.form_error])

    def on_form_change(status_text, base_value, *values):
        problem = form_problem(studio, keys, base_value, values)
        # a refusal for a settings problem goes once the settings are fixed
        stale = not problem and (status_text or "").startswith("**Settings problem")
        return problem, ("" if stale else gr.skip())

    gr.on([c.input for c in comps] + [w.base.input], on_form_change, [w.status, w.base, *comps],
          [w.form_error, w.status], show_progress="hidden", trigger_mode="always_last")

    def on_save_preset(name, base_value, *values):
        try:
            cfg = config_from_form(studio, keys, base_value, values)
        except ConfigError as e:
            return f"**Cannot save:** {e}", gr.skip()
        safe = safe_name(name, "")
        if not safe:
            return "Give the preset a name.", gr.skip()
        save_config(cfg, studio.dirs.presets / f"{safe}.toml")
        return f"Saved preset `user/{safe}`.", gr.update(choices=preset_names() + user_presets(studio))

    w.save_preset.click(on_save_preset, [w.preset_save_name, w.base, *comps], [w.status, w.preset])
    w.rescan.click(lambda: gr.update(choices=base_choices(studio)), None, w.base)


def _wire_dataset_and_estimate(studio: Studio, w: SimpleNamespace, ds_name: gr.Dropdown):
    """The dataset picker (following the Dataset tab) and the estimate; returns the picker's two updaters."""
    # the Dataset tab's pick is the Train tab's default dataset
    def on_dataset_tab_pick(name):
        choices = runs.dataset_choices(studio)
        if name in [v for _, v in choices]:
            return gr.update(choices=choices, value=name)
        return gr.update(choices=choices)

    ds_name.change(on_dataset_tab_pick, ds_name, w.dataset, show_progress="hidden")

    def on_datasets_refresh(name, current):
        """Fresh choices; the current pick stays, else the Dataset tab's dataset once it has images."""
        choices = runs.dataset_choices(studio)
        values = [v for _, v in choices]
        if current in values:
            return gr.update(choices=choices, value=current)
        return gr.update(choices=choices, value=name if name in values else None)

    def on_estimate(ds, base_value, *values):
        try:
            cfg = config_from_form(studio, w.keys, base_value, values)
        except ConfigError as e:
            return f"**Settings problem:** {e}"
        try:
            runs.dataset_folder(studio, ds)
        except runs.RunRefused as e:
            return str(e)
        n, views = runs.count_images(studio, ds, cfg.dataset.repeats)
        cal = studio.calibration
        if cal is None:
            return estimate_text(cfg, n, views, ds)
        cal.refresh(busy=studio.runner.active() is not None)
        speed = cal.current()
        return estimate_text(cfg, n, views, ds, speed, describe_speed(speed, cal.measuring()))

    w.estimate_btn.click(on_estimate, [w.dataset, w.base, *w.comps], w.estimate_md)
    return on_dataset_tab_pick, on_datasets_refresh


def _wire_start(studio: Studio, w: SimpleNamespace, run_state: gr.State) -> None:
    """Runs made from the form: train now, add to the queue, save into the queued run shown."""
    def run_config(name, base_value, values):
        """The form's config for a run called `name` (raises ConfigError naming the field)."""
        cfg = config_from_form(studio, w.keys, base_value, values)
        cfg.saving.output_name = safe_name(name, "my-lora")  # the adapter is named after its run
        return cfg

    def on_start(ds, name, preset_name, base_value, *values):
        # refused: the panel shows the run training now, if any, never an earlier run's end
        try:
            cfg = run_config(name, base_value, values)
        except ConfigError as e:
            return studio.runner.active(), f"**Settings problem:** {e}"
        try:
            run_id = runs.start_new(studio, cfg, name, ds, preset_name or "")
        except runs.RunRefused as e:
            return studio.runner.active(), f"**Refused:** {e}"
        return run_id, f"Started run `{run_id}`."

    w.start.click(on_start, [w.dataset, w.run_name, w.preset, w.base, *w.comps], [run_state, w.status])

    def on_enqueue(ds, name, preset_name, base_value, *values):
        """The same checks as Train; the run waits in the queue (it starts at once if the device is free)."""
        try:
            cfg = run_config(name, base_value, values)
        except ConfigError as e:
            return f"**Settings problem:** {e}"
        try:
            run_id = runs.add_to_queue(studio, cfg, name, ds, preset_name or "")
        except runs.RunRefused as e:
            return f"**Refused:** {e}"
        return f"Queued run `{run_id}` (the Runs tab lists the queue)."

    w.enqueue.click(on_enqueue, [w.dataset, w.run_name, w.preset, w.base, *w.comps], w.status)

    def on_save_queued(run_id, name, base_value, *values):
        """The form's settings into the queued run shown here (opened from the Runs tab)."""
        if not run_id:
            return "Open a queued run from the Runs tab first."
        try:
            cfg = run_config(name, base_value, values)
        except ConfigError as e:
            return f"**Settings problem:** {e}"
        try:
            return runs.edit_queued(studio, run_id, cfg)
        except (runs.RunRefused, UnsafePath) as e:
            return f"**Refused:** {e}"

    w.save_queued.click(on_save_queued, [run_state, w.run_name, w.base, *w.comps], w.status)


def _wire_steering(studio: Studio, w: SimpleNamespace, run_state: gr.State) -> None:
    """The run shown: stop, sample now, save now, resume."""
    def steer(action):
        @functools.wraps(action)  # keeps the handler's name (on_stop, …) for Gradio's API and the tests
        def handler(run_id, *args):
            if not run_id:
                return "No run selected."
            try:
                return action(run_id, *args)
            except (runs.RunRefused, UnsafePath) as e:
                return f"**Refused:** {e}"
        return handler

    def on_stop(run_id):
        runs.stop(studio, run_id)
        return ""  # the progress line says "stopping", then "stopped": no message to go stale

    def on_sample_now(run_id):
        return runs.ask(studio, run_id, "sample_now")

    def on_save_now(run_id):
        return runs.ask(studio, run_id, "save_now")

    w.stop.click(steer(on_stop), run_state, w.status)
    w.sample_now.click(steer(on_sample_now), run_state, w.status)
    w.save_now.click(steer(on_save_now), run_state, w.status)

    def on_resume(run_id, total_steps=None):
        return runs.resume(studio, run_id, total_steps)

    w.resume.click(steer(on_resume), [run_state, w.more_steps], w.status)


def render(studio: Studio, run_id):
    """(progress, problems, loss, previews, label, saves, after-run buttons) of a run, or of none."""
    # the page fixes the plot's colour domain from the first frame it draws and later only swaps the data:
    # a frame without the two curves' names would leave every later line uncoloured, so "no steps yet"
    # is one point per curve with no loss (not drawn)
    empty = pd.DataFrame({"step": [0, 0], "loss": [float("nan")] * 2, "curve": ["raw", "smoothed"]})
    if not run_id:
        return progress_html("idle", None), "", empty, [], "", "", gr.update(visible=False)
    run_dir = studio.run_dir(run_id)
    info = resolve_state(run_dir)
    view = run_view(run_dir)
    msgs = []
    if info["state"] == "failed":
        msgs.append(f"**Training failed:** {info.get('error') or 'no reason given'}")
    msgs += [f"**Error:** {e}" for e in view.errors if e != info.get("error")]
    if view.warnings:
        more = f" (latest 5 of {len(view.warnings)})" if len(view.warnings) > 5 else ""
        msgs.append(f"**Warnings{more}:**\n" + "\n".join(f"- {w}" for w in view.warnings[-5:]))
    rows = loss_rows(view)
    loss = pd.DataFrame(rows, columns=["step", "loss", "curve"]) if rows else empty
    row = studio.store.get(run_id)
    state = shown_state(row["state"], info["state"]) if row else info["state"]  # a queued run: "queued"
    label = f"Run **{row['name'] if row else run_id}** · `{run_id}` · {state}"
    if row and row.get("dataset"):
        label += f" · dataset `{row['dataset']}`"
    saved = [f"step {step}" for step, _ in view.adapters()]
    saves_md = f"Saved adapters: {', '.join(saved)}" if saved else ""
    done = info["state"] in ("finished", "stopped") and bool(view.adapter)
    return (progress_html(info["state"], view), "\n\n".join(msgs), loss, preview_pairs(view), label,
            saves_md, gr.update(visible=done))


def _wire_live(studio: Studio, w: SimpleNamespace, run_state: gr.State) -> None:
    """The live panel: refreshed each second while the run writes events, and when another run is shown."""
    panel = w.panel

    def on_tick(run_id, last):
        if not run_id:
            return [gr.skip()] * (len(panel) + 1)
        try:
            run_dir = studio.run_dir(run_id)
        except UnsafePath:
            return [gr.skip()] * (len(panel) + 1)
        view = run_view(run_dir)  # reads only what was appended since the last tick
        info = resolve_state(run_dir)
        key = [run_id, view.count, info["state"]]
        if key == last:
            return [gr.skip()] * (len(panel) + 1)
        if info["state"] in ("finished", "stopped", "failed"):
            studio.runner.refresh(run_id)
        return [*render(studio, run_id), key]

    w.timer.tick(on_tick, [run_state, w.seen], [*panel, w.seen], show_progress="hidden")

    def on_run_change(run_id):
        """A new, re-opened or re-attached run: the settings it really trained with, and its panel."""
        skip = [gr.skip()] * (len(w.comps) + 4)
        try:
            panel_values = list(render(studio, run_id))
        except UnsafePath:
            return skip + [gr.skip()] * len(panel) + [None]
        if not run_id:
            return skip + panel_values + [None]
        try:
            cfg = runs.run_config(studio, run_id)
        except (ConfigError, UnsafePath):
            return skip + panel_values + [None]
        row = studio.store.get(run_id) or {}
        ds = row.get("dataset")
        ds_update = gr.update(choices=runs.dataset_choices(studio), value=ds) if ds else gr.skip()
        return [*config_to_values(cfg, w.keys), cfg.model.base, row.get("name", gr.skip()), ds_update, "",
                *panel_values, None]

    run_state.change(on_run_change, run_state, [*w.comps, w.base, w.run_name, w.dataset, w.form_error, *panel,
                                                w.seen])
