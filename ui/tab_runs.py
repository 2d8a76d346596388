"""Runs tab: history from the run store (refreshed from each folder), re-open, delete."""
from __future__ import annotations

import datetime
import shutil

import gradio as gr

from ui.context import Studio
from ui.paths import UnsafePath


def table(studio: Studio) -> list[list]:
    rows = []
    for r in studio.store.list():
        if r["state"] in ("created", "running", "stopping"):
            try:
                r["state"] = studio.runner.refresh(r["id"])["state"]
            except (UnsafePath, OSError):
                pass
        created = datetime.datetime.fromtimestamp(r["created"]).strftime("%Y-%m-%d %H:%M")
        rows.append([r["id"], r["name"], r["state"], r["steps"], r["base"], created])
    return rows


def build(studio: Studio, run_state: gr.State, on_open_outputs: list | None = None) -> dict:
    runs_df = gr.Dataframe(headers=["id", "name", "state", "steps", "base", "created"], value=lambda: table(studio),
                           interactive=False, elem_id="runs-table")
    with gr.Row():
        pick = gr.Dropdown(choices=studio.run_choices(), label="Run", elem_id="runs-pick", scale=3)
        refresh = gr.Button("Refresh", scale=1, elem_id="runs-refresh")
        open_btn = gr.Button("Open in Train tab", variant="primary", scale=1, elem_id="runs-open")
        delete = gr.Button("Delete", variant="stop", scale=1, elem_id="runs-delete")
    msg = gr.Markdown(elem_id="runs-msg")

    def on_refresh():
        return table(studio), gr.update(choices=studio.run_choices())

    refresh.click(on_refresh, None, [runs_df, pick])

    def on_open(run_id):
        if not run_id or not studio.store.get(run_id):
            return gr.skip(), "Pick a run."
        return run_id, f"Opened `{run_id}`: see the Train tab."

    open_btn.click(on_open, pick, [run_state, msg])

    def on_delete(run_id):
        if not run_id or not studio.store.get(run_id):
            return gr.skip(), gr.skip(), "Pick a run."
        info = studio.runner.refresh(run_id)
        if info["state"] in ("running", "stopping"):
            return gr.skip(), gr.skip(), f"Run `{run_id}` is training: stop it first."
        shutil.rmtree(studio.run_dir(run_id), ignore_errors=True)
        studio.store.delete(run_id)
        return table(studio), gr.update(choices=studio.run_choices(), value=None), f"Deleted `{run_id}`."

    delete.click(on_delete, pick, [runs_df, pick, msg])
    return {"table": runs_df, "pick": pick, "refresh": on_refresh}
