"""The page: one tab per module, sharing the session's current run."""
from __future__ import annotations

import gradio as gr

from ui import tab_dataset, tab_export, tab_generate, tab_runs, tab_switch, tab_train
from ui.workspace import Studio

CSS = """
.atelier-bar {height: 18px; background: #e5e7eb; border-radius: 9px; overflow: hidden;}
.atelier-fill {height: 100%; background: #6366f1; transition: width .4s;}
.atelier-finished {background: #16a34a;} .atelier-failed {background: #dc2626;} .atelier-stopped {background: #d97706;}
.atelier-progress-text {margin-top: 4px; font-size: 14px;}
""" + tab_switch.CSS + tab_train.CSS


def build_app(studio: Studio) -> gr.Blocks:
    with gr.Blocks(title="LoRA Atelier") as demo:
        gr.Markdown("# LoRA Atelier\nTrain a Stable Diffusion LoRA: add images, pick settings, watch it learn.")
        run_state = gr.State(None)
        show_tab = tab_switch.tab_target()  # events name a tab here instead of outputting the Tabs
        with gr.Tabs(elem_id=tab_switch.TABS_ID):
            with gr.Tab("Dataset", id="dataset"):
                ds = tab_dataset.build(studio)
            with gr.Tab("Train", id="train") as train_tab:
                train = tab_train.build(studio, ds["ds_name"], run_state)
            with gr.Tab("Runs", id="runs"):
                runs = tab_runs.build(studio, run_state, show_tab)
            with gr.Tab("Generate / compare", id="generate"):
                gen = tab_generate.build(studio)
            with gr.Tab("Export", id="export"):
                exp = tab_export.build(studio)

        def on_load(ds_name):
            # re-attach to the run training now, on the Train tab (older runs open from the Runs tab)
            current = studio.runner.active()
            # the value only when a run trains: re-setting it would re-fill fields the user is editing
            choices = gr.update(choices=studio.run_choices(), **({"value": current} if current else {}))
            return (current, *ds["refresh"](ds_name), *runs["refresh"](), choices, choices,
                    train["dataset_default"](ds_name), "train" if current else "")

        # the tabs take clicks once this has answered: its outputs would undo what a click picked meanwhile
        loaded = demo.load(on_load, ds["ds_name"], [run_state, *ds["outs"], runs["table"], runs["pick"], gen["run"],
                                                    exp["run"], train["dataset"], show_tab])
        tab_switch.then_page_ready(loaded, show_tab)

        # after a run: open it in Generate / Export (switch tab, select the run; the tab fills itself in)
        def open_in(tab, module, outputs):
            def handler(run_id):
                if not run_id:
                    return ("", *(gr.skip(),) * len(outputs))
                return (tab, *module.select_run(studio, run_id))
            handler.__name__ = f"on_open_in_{tab}"
            return handler

        # datasets made in the Dataset tab since the page loaded appear in the Train tab's picker
        train_tab.select(train["dataset_refresh"], [ds["ds_name"], train["dataset"]], train["dataset"],
                         show_progress="hidden")

        def on_heading_to_train():
            studio.runner.warm_up()  # torch and diffusers import while the user fills in the form

        train_tab.select(on_heading_to_train, None, None, show_progress="hidden")
        for button, tab, module, outputs in ((train["open_generate"], "generate", tab_generate, gen["select_outputs"]),
                                             (train["open_export"], "export", tab_export, exp["select_outputs"])):
            tab_switch.then_show_tab(button.click(open_in(tab, module, outputs), run_state, [show_tab, *outputs]),
                                     show_tab)
    return demo
