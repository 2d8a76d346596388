"""Generate/compare tab: strength grids and checkpoint comparisons through `python -m trainer generate`."""
from __future__ import annotations

import json
import time

import gradio as gr

from ui.workspace import Studio
from ui.export_bundle import adapter_path, checkpoint_adapters, run_config
from ui.paths import UnsafePath, inside
from ui.trainer_cli import run_trainer


def _generate(studio: Studio, run_id: str, adapters: list, prompt, negative, seed, steps, cfg_scale,
              strengths: str):
    """One `trainer generate` call: a row per adapter, a column per strength."""
    run_dir = studio.run_dir(run_id)
    cfg = run_config(run_dir)
    out = run_dir / "generate" / time.strftime("%Y%m%d-%H%M%S")
    # `--opt=value`: a prompt such as "--out=/x" or "-h" stays the option's value, never becomes an option
    args = ["generate", f"--base={cfg.model.base}", f"--prompt={prompt or ''}", f"--negative={negative or ''}",
            f"--seed={int(seed)}", f"--steps={int(steps)}", f"--cfg={cfg_scale}",
            f"--sampler={cfg.sampling.sampler}", f"--size={cfg.sampling.size or cfg.dataset.resolution}",
            f"--strengths={strengths}", f"--out={out}", "--json"]
    for a in adapters:
        args.append(f"--adapter={a}")
    res = run_trainer(args, python=studio.python)
    if res.code != 0:
        raise gr.Error(f"generate failed: {res.message}")
    try:
        items = json.loads(res.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise gr.Error(f"generate printed no JSON list: {res.message}")
    imgs = []
    for it in items:
        try:
            p = inside(run_dir, it["path"]) if not str(it["path"]).startswith("/") else inside(out, it["path"])
        except (UnsafePath, KeyError):
            continue
        imgs.append((str(p), f"{it.get('adapter') or 'base'} · strength {it.get('strength')} · seed {it.get('seed')}"))
    return imgs


def build(studio: Studio) -> dict:
    with gr.Row():
        run = gr.Dropdown(choices=studio.run_choices(), label="Run", elem_id="gen-run", scale=3)
        refresh = gr.Button("Refresh runs", scale=1)
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", lines=2, scale=3, elem_id="gen-prompt")
        negative = gr.Textbox(label="Negative prompt", lines=2, scale=2)
    with gr.Row():
        seed = gr.Number(value=1234, precision=0, minimum=0, label="Seed")
        steps = gr.Number(value=20, precision=0, minimum=1, maximum=150, label="Steps")
        cfg_scale = gr.Number(value=7.0, minimum=1.0, maximum=30.0, label="CFG scale")
        strengths = gr.Textbox(value="0,0.5,1", label="Strengths (comma-separated)")
    with gr.Row():
        grid_btn = gr.Button("Strength grid (final adapter)", variant="primary", elem_id="gen-grid")
        ckpt_btn = gr.Button("Compare saved checkpoints (strength 1)", elem_id="gen-ckpts")
    gallery = gr.Gallery(label="Results", columns=4, height=420, elem_id="gen-gallery")

    refresh.click(lambda: gr.update(choices=studio.run_choices()), None, run)

    def on_grid(run_id, p, n, s, k, c, st):
        if not run_id:
            raise gr.Error("Pick a run.")
        adapter = adapter_path(studio.run_dir(run_id))
        if adapter is None:
            raise gr.Error("This run has no adapter yet.")
        return _generate(studio, run_id, [adapter], p, n, s, k, c, st)

    grid_btn.click(on_grid, [run, prompt, negative, seed, steps, cfg_scale, strengths], gallery)

    def on_ckpts(run_id, p, n, s, k, c):
        if not run_id:
            raise gr.Error("Pick a run.")
        ckpts = checkpoint_adapters(studio.run_dir(run_id))
        if not ckpts:
            raise gr.Error("This run has no saved checkpoints.")
        return _generate(studio, run_id, [path for _, path in ckpts], p, n, s, k, c, "1")

    ckpt_btn.click(on_ckpts, [run, prompt, negative, seed, steps, cfg_scale], gallery)
    return {"run": run}
