"""Runs tab: every run with its state, live step, duration, dataset, thumbnail and final loss; a row opens
the run in the Train tab; delete asks first. The data comes from ui/runs.py."""
from __future__ import annotations

import html
from types import SimpleNamespace

import gradio as gr

from ui import runs
from ui.sample_browser import KEYS_JS as SAMPLE_KEYS_JS, grid_html
from ui.tab_switch import then_show_tab
from ui.workspace import Studio
from ui.paths import UnsafePath

HEADERS = ["", "name", "state", "steps", "duration", "dataset", "final loss", "base", "created", "id"]


def _thumb(s: runs.RunSummary) -> str:
    # served by Gradio's file route, which allows only the data folder's runs/ and datasets/
    return f'<img src="/gradio_api/file={html.escape(str(s.thumbnail))}" width="48" height="48">' if s.thumbnail else ""


def table(studio: Studio) -> list[list]:
    rows, listed = [], runs.summaries(studio)
    queued = [s.id for s in listed if s.state == runs.QUEUED]
    for s in listed:
        steps = f"{s.step}/{s.max_steps}" if s.max_steps else str(s.step)
        loss = f"{s.final_loss:.4f}" if s.final_loss is not None else "–"
        state = f"queued #{queued.index(s.id) + 1}" if s.state == runs.QUEUED else s.state
        rows.append([_thumb(s), s.name, state, steps, runs.fmt_duration(s.seconds) if s.seconds else "–",
                     s.dataset or "–", loss, s.base, runs.created_text(s.created), s.id])
    return rows


def build(studio: Studio, run_state: gr.State, show_tab: gr.Textbox) -> dict:
    w = _layout(studio)
    # the order of these calls is the order the events are registered in (their api names count up in it)
    on_refresh = _wire_table(studio, w, run_state, show_tab)
    _wire_delete(studio, w)
    _wire_queue(studio, w)
    return {"table": w.runs_df, "pick": w.pick, "refresh": on_refresh, "open": w.open_btn}


def _layout(studio: Studio) -> SimpleNamespace:
    """The tab's widgets: the table, the picked run's buttons, the delete confirmation, the queue's buttons and
    the picked run's samples."""
    w = SimpleNamespace()
    w.runs_df = gr.Dataframe(headers=HEADERS, value=lambda: table(studio), interactive=False, elem_id="runs-table",
                             datatype=["html"] + ["str"] * (len(HEADERS) - 1), wrap=True)
    with gr.Row():
        w.pick = gr.Dropdown(choices=studio.run_choices(), label="Run", elem_id="runs-pick", scale=3)
        w.refresh = gr.Button("Refresh", scale=1, elem_id="runs-refresh")
        w.open_btn = gr.Button("Open in Train tab", variant="primary", scale=1, elem_id="runs-open")
        w.delete = gr.Button("Delete…", variant="stop", scale=1, elem_id="runs-delete")
    with gr.Row(visible=False) as w.confirm_row:
        w.confirm_md = gr.Markdown(elem_id="runs-confirm-text")
        w.confirm = gr.Button("Yes, delete it", variant="stop", elem_id="runs-delete-confirm", scale=0)
        w.cancel = gr.Button("Keep it", elem_id="runs-delete-cancel", scale=0)
    with gr.Row():
        w.up = gr.Button("Move up", size="sm", elem_id="runs-queue-up")
        w.down = gr.Button("Move down", size="sm", elem_id="runs-queue-down")
        w.remove = gr.Button("Remove from queue", size="sm", elem_id="runs-queue-remove")
    gr.Markdown("Queued runs start one after another (the first when the device is free). A failed or stopped "
                "run does not stop the queue. To change a queued run's settings, open it in the Train tab and "
                "press **Save to queued run**.")
    w.msg = gr.Markdown(elem_id="runs-msg")
    with gr.Accordion("Samples of the picked run", open=True, elem_id="runs-samples-box"):
        w.samples = gr.HTML("<p id='samples-none'>Pick a run to see its previews.</p>", js_on_load=SAMPLE_KEYS_JS,
                            elem_id="runs-samples")
    w.timer = gr.Timer(2.0)  # steps and states move while a run trains
    return w


def _wire_table(studio: Studio, w: SimpleNamespace, run_state: gr.State, show_tab: gr.Textbox):
    """Refreshing the table (the button, the timer while runs move), the picked run's samples, and opening a
    run in the Train tab (the button, a click on its row); returns the refresh handler."""
    def samples_of(run_id):
        return grid_html(studio.run_dir(run_id) if run_id and studio.store.get(run_id) else None)

    def on_refresh():
        return table(studio), gr.update(choices=studio.run_choices())

    # the picked run's samples follow in a second step: a pick whose run was removed meanwhile is no longer one
    # of the choices, and as an input of the refresh itself Gradio would refuse it and leave the picker errored
    w.refresh.click(on_refresh, None, [w.runs_df, w.pick]).then(samples_of, w.pick, w.samples)
    w.pick.change(samples_of, w.pick, w.samples)

    def on_tick():
        if not studio.runner.active() and not studio.store.queued():
            return gr.skip()
        return table(studio)

    w.timer.tick(on_tick, None, w.runs_df, show_progress="hidden")

    def on_open(run_id):
        if not run_id or not studio.store.get(run_id):
            return gr.skip(), "Pick a run.", ""
        return run_id, f"Opened `{run_id}` in the Train tab.", "train"

    then_show_tab(w.open_btn.click(on_open, w.pick, [run_state, w.msg, show_tab]), show_tab)

    def on_row(evt: gr.SelectData):
        """A click on a row opens that run (its id is the last column) in the Train tab."""
        row = evt.row_value if evt is not None else None
        if not row or not studio.store.get(str(row[-1])):
            return gr.skip(), gr.skip(), gr.skip(), ""
        return (row[-1], *on_open(row[-1]))

    then_show_tab(w.runs_df.select(on_row, None, [w.pick, run_state, w.msg, show_tab]), show_tab)
    return on_refresh


def _wire_delete(studio: Studio, w: SimpleNamespace) -> None:
    """Delete asks first; the run goes only on the confirmation."""
    def on_ask_delete(run_id):
        if not run_id or not studio.store.get(run_id):
            return gr.skip(), gr.skip(), "Pick a run."
        row = studio.store.get(run_id)
        return (gr.update(visible=True), f"Delete run **{row['name']}** (`{run_id}`) with its adapters and previews? "
                "This cannot be undone.", "")

    w.delete.click(on_ask_delete, w.pick, [w.confirm_row, w.confirm_md, w.msg])

    def on_keep():
        return gr.update(visible=False)

    w.cancel.click(on_keep, None, w.confirm_row)

    def on_delete(run_id):
        try:
            text = runs.delete(studio, run_id)
        except (runs.RunRefused, UnsafePath) as e:
            return gr.skip(), gr.skip(), str(e), gr.update(visible=False)
        return table(studio), gr.update(choices=studio.run_choices(), value=None), text, gr.update(visible=False)

    w.confirm.click(on_delete, w.pick, [w.runs_df, w.pick, w.msg, w.confirm_row])


def _wire_queue(studio: Studio, w: SimpleNamespace) -> None:
    """The picked queued run moved up or down the queue, or removed from it."""
    def queue_action(action):
        def handler(run_id):
            if not run_id or not studio.store.get(run_id):
                return gr.skip(), gr.skip(), "Pick a queued run."
            try:
                text = action(run_id)
            except (runs.RunRefused, UnsafePath) as e:
                return gr.skip(), gr.skip(), f"**Refused:** {e}"
            gone = not studio.store.get(run_id)  # removed from the queue: its folder went too
            return table(studio), gr.update(choices=studio.run_choices(), **({"value": None} if gone else {})), text
        handler.__name__ = f"on_{action.__name__}"
        return handler

    def queue_up(run_id):
        return runs.move_queued(studio, run_id, -1)

    def queue_down(run_id):
        return runs.move_queued(studio, run_id, +1)

    def queue_remove(run_id):
        return runs.remove_queued(studio, run_id)

    outs = [w.runs_df, w.pick, w.msg]
    w.up.click(queue_action(queue_up), w.pick, outs)
    w.down.click(queue_action(queue_down), w.pick, outs)
    w.remove.click(queue_action(queue_remove), w.pick, outs)
