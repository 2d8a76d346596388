"""Generate/compare tab: a labelled grid (checkpoint × strength × prompt) drawn by `python -m trainer generate`,
from a run's saved adapters or from adapter files (uploaded, or LoRAs in the models folders) on a chosen base."""
from __future__ import annotations

import html
import json
import secrets
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import gradio as gr
from PIL import Image

from trainer.config import ConfigError, SamplingSection
from trainer.tools.grid import strength_label

from ui.dataset_files import discard_uploads
from ui.adapter_files import AdapterFileError, adapter_choices, adapters_dir, import_upload, resolve_choice
from ui.workspace import Studio
from ui.export_bundle import SavedAdapter, checkpoint_adapters, run_config
from ui.paths import UnsafePath, inside
from ui.tab_train import base_choices, check_base
from ui.trainer_cli import run_trainer

SAMPLERS = list(typing.get_args(SamplingSection.model_fields["sampler"].annotation))
SOURCES = ["A run", "Adapter files"]
GRID_FILE = "grid.png"  # what `trainer generate --grid` writes in its --out folder
CELL = "border:none;padding:4px 6px;vertical-align:middle"  # the page's default table borders box every image
DEFAULT_ROWS = 4  # checkpoints pre-selected for a grid: each row costs one model load and len(strengths) images


@dataclass
class Comparison:
    cells: list[dict]  # `trainer generate --json` entries: path, label, row, prompt, prompt_index, strength, seed
    grid: Path | None
    strengths: list[float]

    def gallery(self) -> list[tuple[str, str]]:
        many = len({c["prompt_index"] for c in self.cells}) > 1
        return [(c["path"], f"{c['label']} · {strength_label(c['strength'])} · {c.get('adapter') or 'base'} · "
                            f"seed {c['seed']}" + (f" · prompt {c['prompt_index'] + 1}" if many else ""))
                for c in self.cells]


def prompt_lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()] or [""]


def compare(studio: Studio, root: Path, base: str, adapters: list[Path], labels: list[str], prompts: list[str],
            negative, seed, steps, cfg_scale, sampler: str, size: int, strengths: str) -> Comparison:
    """One `trainer generate --grid` call writing into a new folder under root/generate."""
    out = root / "generate" / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    # `--opt=value`: a prompt such as "--out=/x" or "-h" stays the option's value, never becomes an option
    args = ["generate", f"--base={base}", *(f"--prompt={p}" for p in prompts), f"--negative={negative or ''}",
            f"--seed={int(seed)}", f"--steps={int(steps)}", f"--cfg={cfg_scale}", f"--sampler={sampler}",
            f"--size={int(size)}", f"--strengths={strengths}", f"--out={out}", "--grid", "--json"]
    for a, label in zip(adapters, labels):
        args += [f"--adapter={a}", f"--label={label}"]
    res = run_trainer(args, python=studio.python)
    if res.code != 0:
        raise gr.Error(f"generate failed: {res.message}")
    try:
        items = json.loads(res.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise gr.Error(f"generate printed no JSON list: {res.message}")
    cells = []
    for it in items:
        try:  # only files the trainer wrote into this call's folder are shown
            it["path"] = str(inside(out, it["path"]))
        except (UnsafePath, KeyError, TypeError):
            continue
        it.setdefault("label", it.get("adapter") or "base")
        it.setdefault("prompt_index", 0)
        it.setdefault("prompt", prompts[0])
        cells.append(it)
    grid = out / GRID_FILE
    return Comparison(cells, grid if grid.is_file() else None, sorted({float(c["strength"]) for c in cells}))


def _generate(studio: Studio, run_id: str, adapters: list, prompt, negative, seed, steps, cfg_scale,
              strengths: str, sampler: str | None = None, labels: list[str] | None = None) -> list[tuple[str, str]]:
    """A run's adapters on the run's base: a row per adapter, a column per strength (gallery items)."""
    run_dir = studio.run_dir(run_id)
    cfg = run_config(run_dir)
    prompts = prompt if isinstance(prompt, list) else [prompt or ""]
    labels = labels or [Path(a).stem for a in adapters]
    return compare(studio, run_dir, cfg.model.base, [Path(a) for a in adapters], labels, prompts, negative, seed,
                   steps, cfg_scale, sampler or cfg.sampling.sampler, cfg.sampling.size or cfg.dataset.resolution,
                   strengths).gallery()


def grid_table(comp: Comparison) -> str:
    """The comparison as an HTML table: a column per strength, a row per checkpoint, a heading per prompt."""
    if not comp.cells:
        return ""
    cols = comp.strengths
    head = "".join(f'<th scope="col" data-strength="{s}" style="{CELL}">{html.escape(strength_label(s))}</th>'
                   for s in cols)
    prompts: dict[int, str] = {}
    rows: dict[tuple[int, int], dict[float, dict]] = {}
    for c in comp.cells:
        prompts[c["prompt_index"]] = c["prompt"]
        rows.setdefault((c["prompt_index"], c.get("row", 0)), {})[float(c["strength"])] = c
    body = []
    for pi in sorted(prompts):
        if len(prompts) > 1:
            body.append(f'<tr style="border:none"><th colspan="{len(cols) + 1}" class="gen-prompt-head" '
                        f'style="{CELL};text-align:left">'
                        f'prompt {pi + 1}: {html.escape(prompts[pi])}</th></tr>')
        for (p, _), by_strength in sorted(rows.items()):
            if p != pi:
                continue
            label = next(iter(by_strength.values()))["label"]
            tds = []
            for s in cols:
                c = by_strength.get(s)
                if c is None:
                    tds.append(f'<td style="{CELL}"></td>')
                    continue
                try:
                    with Image.open(c["path"]) as im:
                        small = max(im.size) < 160
                except OSError:
                    small = False
                style = "width:160px;height:auto" + (";image-rendering:pixelated" if small else "")
                tip = html.escape(f"{label} · {strength_label(s)} · seed {c['seed']} · {c['prompt']}")
                src = f"gradio_api/file={quote(c['path'])}"  # runs/ and generate/ are the server's allowed paths
                tds.append(f'<td data-strength="{s}" style="{CELL}"><img src="{src}" alt="{tip}" title="{tip}" '
                           f'style="{style}"></td>')
            body.append(f'<tr data-row="{html.escape(label)}" style="border:none">'
                        f'<th scope="row" style="{CELL};text-align:left">'
                        f'{html.escape(label)}</th>{"".join(tds)}</tr>')
    return (f'<table id="gen-grid-table" style="border:none;border-collapse:collapse;width:auto">'
            f'<thead><tr style="border:none"><th style="{CELL}"></th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _outputs(comp: Comparison, what: str):
    n_rows = len({(c["prompt_index"], c.get("row", 0)) for c in comp.cells})
    msg = f"{what}: {n_rows} row(s) × {len(comp.strengths)} strength(s), {len(comp.cells)} image(s)."
    return msg, grid_table(comp), str(comp.grid) if comp.grid else None, comp.gallery()


def default_rows(saved: list[SavedAdapter]) -> list[SavedAdapter]:
    """Up to DEFAULT_ROWS saved adapters spread over the run, always ending with the newest (the raw
    weights: their EMA files are there to pick)."""
    saved = [a for a in saved if not a.ema]
    if len(saved) <= DEFAULT_ROWS:
        return saved
    idx = sorted({round(i * (len(saved) - 1) / (DEFAULT_ROWS - 1)) for i in range(DEFAULT_ROWS)})
    return [saved[i] for i in idx]


def _adapter_roots(studio: Studio) -> list[Path]:
    return [adapters_dir(studio.dirs.root), *studio.model_roots]


def select_run(studio: Studio, run_id: str | None) -> list:
    """Updates for build(...)["select_outputs"] that open `run_id` here (for "Open in Generate" from another
    tab); the picker's change event then fills in its checkpoints, prompts, CFG and sampler."""
    return [gr.update(value=SOURCES[0]), gr.update(choices=studio.run_choices(), value=run_id)]


def _layout(studio: Studio) -> SimpleNamespace:
    """The tab's widgets: what to compare (a run's checkpoints or adapter files), prompts and settings, results."""
    w = SimpleNamespace()
    w.source = gr.Radio(SOURCES, value=SOURCES[0], label="Compare", elem_id="gen-source",
                        info="A run's checkpoints, or any kohya-format adapter file (ours or a Civitai LoRA).")
    with gr.Group(visible=True) as w.run_box:
        with gr.Row():
            # value=None: a preselected first choice would show a run whose details were never filled in
            w.run = gr.Dropdown(choices=studio.run_choices(), value=None, label="Run", elem_id="gen-run", scale=3)
            w.refresh = gr.Button("Refresh runs", scale=1)
        w.ckpts = gr.CheckboxGroup(label="Checkpoints (grid rows)", choices=[], elem_id="gen-ckpt-pick")
    with gr.Group(visible=False) as w.file_box:
        with gr.Row():
            w.files = gr.Dropdown(choices=adapter_choices(_adapter_roots(studio)), multiselect=True, scale=3,
                                  label="Adapter files (grid rows)", elem_id="gen-adapter")
            w.base = gr.Dropdown(choices=base_choices(studio), value="builtin:shapes", allow_custom_value=True,
                                 label="Base model", elem_id="gen-base", scale=2,
                                 info="The base the adapter was trained for.")
        w.upload = gr.File(label="Upload an adapter (.safetensors, kohya format)", height=110, elem_id="gen-upload")
        w.upload_msg = gr.Markdown(elem_id="gen-upload-msg")
    with gr.Row():
        w.prompt = gr.Textbox(label="Prompts (one per line; each adds a block of rows)", lines=2, scale=3,
                              elem_id="gen-prompt")
        w.negative = gr.Textbox(label="Negative prompt", lines=2, scale=2, elem_id="gen-negative")
    with gr.Row():
        w.seed = gr.Number(value=1234, precision=0, minimum=0, label="Seed (prompt i: seed + i)", elem_id="gen-seed")
        w.steps = gr.Number(value=20, precision=0, minimum=1, maximum=150, label="Steps", elem_id="gen-steps")
        w.cfg_scale = gr.Number(value=7.0, minimum=1.0, maximum=30.0, label="CFG scale", elem_id="gen-cfg")
        w.sampler = gr.Dropdown(SAMPLERS, value="dpmpp_2m", label="Sampler", elem_id="gen-sampler")
        w.strengths = gr.Textbox(value="0,0.5,1", label="Strengths (grid columns, comma-separated)",
                                 elem_id="gen-strengths")
    with gr.Row():
        w.grid_btn = gr.Button("Draw grid: rows × strengths", variant="primary", elem_id="gen-grid")
        w.ckpt_btn = gr.Button("Compare all checkpoints (strength 1)", elem_id="gen-ckpts")
    w.msg = gr.Markdown(elem_id="gen-msg")
    w.table = gr.HTML(elem_id="gen-table")
    w.grid_file = gr.File(label="Grid image (labelled PNG)", interactive=False, elem_id="gen-grid-file")
    w.gallery = gr.Gallery(label="Single images", columns=4, height=420, elem_id="gen-gallery")
    return w


def build(studio: Studio) -> dict:
    w = _layout(studio)
    # the order of these calls is the order the events are registered in (their api names count up in it)
    _wire_sources(studio, w)
    _wire_grids(studio, w)
    return {"run": w.run, "select_outputs": [w.source, w.run]}


def _wire_sources(studio: Studio, w: SimpleNamespace) -> None:
    """Runs or adapter files: the run picker pre-fills from the run, an uploaded adapter joins the files."""
    w.refresh.click(lambda: gr.update(choices=studio.run_choices()), None, w.run)

    def on_source(src):
        runs = src == SOURCES[0]
        # files dropped into the models folder since the page was built show up when the file picker opens
        files_update = gr.skip() if runs else gr.update(choices=adapter_choices(_adapter_roots(studio)))
        return gr.update(visible=runs), gr.update(visible=not runs), files_update

    w.source.change(on_source, w.source, [w.run_box, w.file_box, w.files])

    def on_pick_run(run_id):
        """Pre-fill from the run: its checkpoints, preview prompts, negative prompt, seed, steps, CFG, sampler."""
        if not run_id or not studio.store.get(run_id):
            return [gr.update(choices=[], value=[])] + [gr.skip()] * 6
        run_dir = studio.run_dir(run_id)
        try:
            cfg = run_config(run_dir)
        except (ConfigError, OSError) as e:
            gr.Warning(f"{run_id}: {e}")
            return [gr.update(choices=[], value=[])] + [gr.skip()] * 6
        saved = checkpoint_adapters(run_dir)
        rel = lambda a: str(a.path.relative_to(run_dir))  # noqa: E731
        s = cfg.sampling
        return (gr.update(choices=[(a.label, rel(a)) for a in saved], value=[rel(a) for a in default_rows(saved)]),
                "\n".join(s.prompts) or cfg.saving.trigger_phrase, s.negative_prompt, s.seed, s.steps, s.guidance_scale,
                s.sampler)

    w.run.change(on_pick_run, w.run, [w.ckpts, w.prompt, w.negative, w.seed, w.steps, w.cfg_scale, w.sampler])

    def on_adapter_upload(path):
        if not path:
            return gr.skip(), gr.skip(), gr.skip()
        shown = Path(str(path)).name
        try:
            up = inside(studio.dirs.gradio_tmp, path)  # Gradio's upload cache, never a file of the user's
            if not up.is_file():
                raise UnsafePath(f"{shown}: not a file uploaded through this page")
        except UnsafePath as e:
            return gr.skip(), f"**Refused:** {e}", None
        try:
            target, info = import_upload(up, shown, adapters_dir(studio.dirs.root))
        except (AdapterFileError, UnsafePath, OSError) as e:
            return gr.skip(), f"**Refused:** {e}", None
        finally:
            discard_uploads([up], studio.dirs.gradio_tmp)  # accepted files live in adapters/, the cache keeps none
        choices = adapter_choices(_adapter_roots(studio))
        return (gr.update(choices=choices, value=[str(target)]),
                f"Added `{target.name}`: {info}. Pick the base it was trained for, then draw the grid.", None)

    w.upload.upload(on_adapter_upload, w.upload, [w.files, w.upload_msg, w.upload])


def _wire_grids(studio: Studio, w: SimpleNamespace) -> None:
    """The two grid buttons: picked rows × strengths, or every checkpoint of the run at strength 1."""
    def run_rows(run_id, picked):
        if not run_id or not studio.store.get(run_id):
            raise gr.Error("Pick a run.")
        run_dir = studio.run_dir(run_id)
        saved = {str(a.path.relative_to(run_dir)): a for a in checkpoint_adapters(run_dir)}
        if not saved:
            raise gr.Error("This run has no adapter yet.")
        rows = [saved[p] for p in picked or [] if p in saved] or [list(saved.values())[-1]]
        return sorted(rows, key=lambda a: a.step)

    def on_grid(src, run_id, picked, file_values, base_value, p, n, s, k, c, smp, st):
        prompts = prompt_lines(p)
        if src == SOURCES[0]:
            rows = run_rows(run_id, picked)
            run_dir = studio.run_dir(run_id)
            cfg = run_config(run_dir)
            comp = compare(studio, run_dir, cfg.model.base, [a.path for a in rows], [a.label for a in rows],
                           prompts, n, s, k, c, smp, cfg.sampling.size or cfg.dataset.resolution, st)
            return _outputs(comp, f"Run `{run_id}`")
        if not file_values:
            raise gr.Error("Pick or upload an adapter file.")
        try:
            paths = [resolve_choice(_adapter_roots(studio), v) for v in file_values]
            base_model = check_base(studio, base_value)
        except (UnsafePath, ConfigError) as e:
            raise gr.Error(str(e))
        comp = compare(studio, studio.dirs.root, base_model, paths, [p_.name for p_ in paths], prompts, n, s, k, c,
                       smp, 0, st)
        return _outputs(comp, f"On `{base_model}`")

    results = [w.msg, w.table, w.grid_file, w.gallery]
    w.grid_btn.click(on_grid, [w.source, w.run, w.ckpts, w.files, w.base, w.prompt, w.negative, w.seed, w.steps,
                               w.cfg_scale, w.sampler, w.strengths], results)

    def on_ckpts(run_id, p, n, s, k, c, smp):
        if not run_id or not studio.store.get(run_id):
            raise gr.Error("Pick a run.")
        run_dir = studio.run_dir(run_id)
        saved = checkpoint_adapters(run_dir, ema=False)
        if not saved:
            raise gr.Error("This run has no saved checkpoints.")
        cfg = run_config(run_dir)
        comp = compare(studio, run_dir, cfg.model.base, [a.path for a in saved], [a.label for a in saved],
                       prompt_lines(p), n, s, k, c, smp, cfg.sampling.size or cfg.dataset.resolution, "1")
        return _outputs(comp, f"Run `{run_id}`, every checkpoint")

    w.ckpt_btn.click(on_ckpts, [w.run, w.prompt, w.negative, w.seed, w.steps, w.cfg_scale, w.sampler], results)
