"""Switching the page's tab from an event without listing the Tabs among the event's outputs.

An event's outputs stay in the page's loading-status list for good, and on every status change of any event
(pending, then done) Gradio's front end copies every component listed there. The Tabs hold the whole page,
so one event that outputs them makes every later click of that session slower (0.5-1 s a Next at 500
images). Instead the handler writes the tab's id (or "" for none) into a hidden textbox, and the page clicks
that tab as the user would: the tab's own select handlers run as after a click."""
from __future__ import annotations

import gradio as gr

SHOW_TAB_JS = """(tab) => { if (tab) { const b = document.querySelector(`button[data-tab-id="${tab}"]`);
  if (b) b.click(); } return []; }"""


def tab_target() -> gr.Textbox:
    """The hidden textbox the handlers write a tab id into (one per page)."""
    return gr.Textbox(visible=False, elem_id="page-show-tab")


def then_show_tab(event, target: gr.Textbox):
    """After `event`, show the tab whose id it wrote into `target`."""
    return event.then(None, target, None, js=SHOW_TAB_JS)
