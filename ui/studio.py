"""The page: one tab per module, sharing the session's current run."""
from __future__ import annotations

import gradio as gr

from ui import tab_dataset, tab_export, tab_generate, tab_runs, tab_train
from ui.context import Studio

CSS = """
.atelier-bar {height: 18px; background: #e5e7eb; border-radius: 9px; overflow: hidden;}
.atelier-fill {height: 100%; background: #6366f1; transition: width .4s;}
.atelier-finished {background: #16a34a;} .atelier-failed {background: #dc2626;} .atelier-stopped {background: #d97706;}
.atelier-progress-text {margin-top: 4px; font-size: 14px;}
"""


def build_app(studio: Studio) -> gr.Blocks:
    with gr.Blocks(title="LoRA Atelier") as demo:
        gr.Markdown("# LoRA Atelier\nTrain a Stable Diffusion LoRA: add images, pick settings, watch it learn.")
        run_state = gr.State(None)
        with gr.Tabs():
            with gr.Tab("Dataset", id="dataset"):
                ds = tab_dataset.build(studio)
            with gr.Tab("Train", id="train"):
                tab_train.build(studio, ds["ds_name"], run_state)
            with gr.Tab("Runs", id="runs"):
                runs = tab_runs.build(studio, run_state)
            with gr.Tab("Generate / compare", id="generate"):
                gen = tab_generate.build(studio)
            with gr.Tab("Export", id="export"):
                exp = tab_export.build(studio)

        def on_load(ds_name):
            # re-attach to the run training now (older runs open from the Runs tab)
            current = studio.runner.active()
            choices = gr.update(choices=studio.run_choices(), value=current)
            return (current, *ds["refresh"](ds_name), *runs["refresh"](), choices, choices)

        demo.load(on_load, ds["ds_name"], [run_state, *ds["outs"], runs["table"], runs["pick"], gen["run"],
                                           exp["run"]])
    return demo
