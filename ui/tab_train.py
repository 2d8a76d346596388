"""Train tab: base model, preset, the generated form, estimate, start/stop/resume, live progress."""
from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr
import pandas as pd

from trainer.config import (REPO_ROOT, ConfigError, load_config, load_preset, preset_names, read_preset,
                            save_config)
from trainer.models.spec import parse_base
from trainer.run.events import CONFIG_FILE

from ui import dataset_files as df
from ui.context import Studio
from ui.form import build_form, config_to_values, values_to_config
from ui.live import live, progress_html
from ui.paths import UnsafePath, inside, safe_name
from ui.runner import RunnerBusy, log_tail, resolve_state

BUILTIN_BASES = [("Demo base (bundled shapes model)", "builtin:shapes"), ("Tiny random SD1 (tests)", "tiny:sd1")]
MODEL_SUFFIXES = (".safetensors", ".ckpt")


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


# the datasets that ship with the project (the demo's concept and regularisation images): read-only
# to the studio, and named repository-relative in the bundled presets ("datasets/shapes-reg")
BUNDLED_DATASETS = Path(__file__).resolve().parent.parent / "datasets"


def check_extra_paths(studio: Studio, cfg) -> None:
    """The form's other path fields stay inside the studio's folders too: a VAE and a start-from adapter in
    the models folders (or a run's adapter), regularisation images in the datasets folder or among the
    project's bundled datasets."""
    roots = {"model.vae": studio.model_roots, "network.init_weights": [*studio.model_roots, studio.dirs.runs],
             "dataset.reg_path": [studio.dirs.datasets, BUNDLED_DATASETS]}
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


def estimate_text(cfg, n_images: int, repeats_total: int) -> str:
    from trainer.estimate import estimate, format_estimate

    steps = cfg.schedule.max_train_steps
    per_epoch = max(1, repeats_total // max(1, cfg.dataset.batch_size))
    lines = [f"**{steps} steps** · {n_images} image(s), {repeats_total} image views per epoch → "
             f"about {steps / per_epoch:.1f} epoch(s) at batch {cfg.dataset.batch_size}."]
    try:
        est = estimate(cfg, num_images=n_images or None)
        lines.append(f"{format_estimate(est)} — estimated for {est['family']} on {est['device']}.")
    except Exception as e:  # an estimate must never block a launch
        lines.append(f"Time/memory estimate unavailable ({e}).")
    from trainer.models.checks import launch_warnings

    lines += [f"⚠ {w}" for w in launch_warnings(cfg)]  # settings that do not fit the base model's file
    return "\n\n".join(lines)


def _dataset_views(root: Path, default_repeats: int) -> tuple[int, int]:
    n, views = 0, 0
    for folder, reps, count in df.folders(root):
        n += count
        views += count * (reps or default_repeats)
    return n, views


def build(studio: Studio, ds_name: gr.Dropdown, run_state: gr.State) -> dict:
    with gr.Row():
        base = gr.Dropdown(choices=base_choices(studio), value="builtin:shapes", allow_custom_value=True,
                           label="Base model", elem_id="train-base", scale=3,
                           info="Bundled demo base, a model in your models folder, a path there, or a hub id.")
        rescan = gr.Button("Rescan models folder", scale=1)
        preset = gr.Dropdown(choices=preset_names() + user_presets(studio), value=None, label="Preset",
                             elem_id="train-preset", scale=2)
    with gr.Row():
        run_name = gr.Textbox(value="my-lora", label="Run name", elem_id="train-run-name", scale=2)
        preset_save_name = gr.Textbox(label="Save settings as preset", placeholder="name", scale=2)
        save_preset = gr.Button("Save preset", scale=1)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            widgets = build_form()
        with gr.Column(scale=2, elem_id="train-live"):
            with gr.Row():
                estimate_btn = gr.Button("Estimate", elem_id="train-estimate-btn")
                start = gr.Button("Train", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
                resume = gr.Button("Resume", elem_id="train-resume")
            status = gr.Markdown(elem_id="train-status")
            estimate_md = gr.Markdown(elem_id="train-estimate")
            run_label = gr.Markdown(elem_id="train-run-label")
            progress = gr.HTML(progress_html("idle", live(studio.dirs.runs / "_none")), elem_id="train-progress-box")
            problems = gr.Markdown(elem_id="train-problems")
            loss_plot = gr.LinePlot(x="step", y="loss", title="Loss", height=240, elem_id="train-loss")
            previews = gr.Gallery(label="Previews (base | adapter at the same seed)", columns=2, height=340,
                                  elem_id="train-previews")
    keys, comps = list(widgets), list(widgets.values())
    seen = gr.State(None)
    timer = gr.Timer(1.0)

    def cfg_from(values, base_value, ds):
        cfg = values_to_config(keys, list(values), {"model.base": check_base(studio, base_value)})
        check_extra_paths(studio, cfg)
        return cfg

    def on_preset(name):
        if not name:
            return [gr.skip()] * (len(comps) + 2)
        try:
            cfg = load_preset(preset_path_or_name(studio, name))
        except ConfigError as e:
            return [gr.skip()] * len(comps) + [gr.skip(), f"**Preset error:** {e}"]
        data, about = read_preset(preset_path_or_name(studio, name))  # about: what the preset is for
        loaded = f"Loaded preset `{name}`" + (f": {about}" if about else ".")
        # a family preset names no base: the model the user picked stays
        return [*config_to_values(cfg, keys), cfg.model.base if "base" in data.get("model", {}) else gr.skip(),
                loaded]

    preset.change(on_preset, preset, [*comps, base, status])

    def on_save_preset(name, base_value, *values):
        try:
            cfg = cfg_from(values, base_value, None)
        except ConfigError as e:
            return f"**Cannot save:** {e}", gr.skip()
        safe = safe_name(name, "")
        if not safe:
            return "Give the preset a name.", gr.skip()
        save_config(cfg, studio.dirs.presets / f"{safe}.toml")
        return f"Saved preset `user/{safe}`.", gr.update(choices=preset_names() + user_presets(studio))

    save_preset.click(on_save_preset, [preset_save_name, base, *comps], [status, preset])
    rescan.click(lambda: gr.update(choices=base_choices(studio)), None, base)

    def on_estimate(ds, base_value, *values):
        try:
            cfg = cfg_from(values, base_value, ds)
        except ConfigError as e:
            return f"**Settings problem:** {e}"
        try:
            root = studio.dirs.dataset_dir(safe_name(ds or "", "my-dataset"))
        except UnsafePath as e:
            return str(e)
        n, views = _dataset_views(root, cfg.dataset.repeats)
        return estimate_text(cfg, n, views)

    estimate_btn.click(on_estimate, [ds_name, base, *comps], estimate_md)

    def on_start(ds, name, preset_name, base_value, *values):
        try:
            cfg = cfg_from(values, base_value, ds)
        except ConfigError as e:
            return gr.skip(), f"**Settings problem:** {e}"
        try:
            src = studio.dirs.dataset_dir(safe_name(ds or "", "my-dataset"))
        except UnsafePath as e:
            return gr.skip(), f"**Dataset:** {e}"
        if not df.list_images(src):
            return gr.skip(), "**No images:** upload images in the Dataset tab first."
        busy = studio.runner.active()
        if busy:
            return gr.skip(), f"**Refused:** run `{busy}` is training on this device; stop it or wait."
        run_id = studio.store.new_id(name or "run")
        run_dir = studio.run_dir(run_id)
        (run_dir / "dataset").mkdir(parents=True)
        df.copy_dataset(src, run_dir / "dataset")
        cfg.dataset.path = str(run_dir / "dataset")
        save_config(cfg, run_dir / CONFIG_FILE)
        studio.store.add(run_id, name or "run", cfg.model.base, preset_name or "", run_dir, 0)
        try:
            studio.runner.start(run_id)
        except RunnerBusy as e:  # another session won the race for the device
            studio.store.delete(run_id)
            shutil.rmtree(run_dir, ignore_errors=True)
            return gr.skip(), f"**Refused:** {e}"
        return run_id, f"Started run `{run_id}`."

    start.click(on_start, [ds_name, run_name, preset, base, *comps], [run_state, status])

    def on_stop(run_id):
        if not run_id:
            return "No run selected."
        return studio.runner.stop(run_id)

    stop.click(on_stop, run_state, status)

    def on_resume(run_id):
        if not run_id:
            return "No run selected."
        info = resolve_state(studio.run_dir(run_id))
        if info["state"] in ("running", "stopping"):
            return f"Run `{run_id}` is already running."
        try:
            studio.runner.start(run_id, resume=True)
        except (RunnerBusy, FileNotFoundError) as e:
            return f"**Refused:** {e}"
        return f"Resumed run `{run_id}` (it continues from its last saved state)."

    resume.click(on_resume, run_state, status)

    def on_tick(run_id, last):
        if not run_id:
            return [gr.skip()] * 6
        try:
            run_dir = studio.run_dir(run_id)
        except UnsafePath:
            return [gr.skip()] * 6
        lr = live(run_dir)
        count = lr.poll()
        info = resolve_state(run_dir)
        key = (run_id, count, info["state"])
        if key == (tuple(last) if last else None):
            return [gr.skip()] * 6
        if info["state"] in ("finished", "stopped", "failed"):
            studio.runner.refresh(run_id)
        msgs = []
        if info["state"] == "failed":
            err = info.get("error") or (lr.errors[-1] if lr.errors else "") or log_tail(run_dir)
            msgs.append(f"**Training failed:** {err}")
        for e in lr.errors:
            if info["state"] != "failed" or e != info.get("error"):
                msgs.append(f"**Error:** {e}")
        if lr.warnings:
            more = f" (latest 5 of {len(lr.warnings)})" if len(lr.warnings) > 5 else ""
            msgs.append(f"**Warnings{more}:**\n" + "\n".join(f"- {w}" for w in lr.warnings[-5:]))
        loss = pd.DataFrame(lr.losses, columns=["step", "loss"]) if lr.losses else pd.DataFrame(
            {"step": [], "loss": []})
        row = studio.store.get(run_id)
        label = f"Run **{row['name'] if row else run_id}** · `{run_id}` · {info['state']}"
        return (progress_html(info["state"], lr), "\n\n".join(msgs), loss, lr.preview_pairs(), label, list(key))

    timer.tick(on_tick, [run_state, seen], [progress, problems, loss_plot, previews, run_label, seen],
               show_progress="hidden")
    def on_run_change(run_id):
        # re-opened or re-attached run: show the settings it was started with
        if not run_id:
            return [gr.skip()] * (len(comps) + 3)
        try:
            cfg = load_config(studio.run_dir(run_id) / CONFIG_FILE)
        except (ConfigError, UnsafePath):
            return [gr.skip()] * (len(comps) + 3)
        row = studio.store.get(run_id)
        return [*config_to_values(cfg, keys), cfg.model.base, row["name"] if row else gr.skip(), None]

    run_state.change(on_run_change, run_state, [*comps, base, run_name, seen])
    return {"base": base, "preset": preset}
