"""Switching the page's tab from an event without listing the Tabs among the event's outputs, and keeping
the tabs closed to clicks until the page load's reply is in.

An event's outputs stay in the page's loading-status list for good, and on every status change of any event
(pending, then done) Gradio's front end copies every component listed there. The Tabs hold the whole page,
so one event that outputs them makes every later click of that session slower (0.5-1 s a Next at 500
images). Instead the handler writes the tab's id (or "" for none) into a hidden textbox, and the page clicks
that tab as the user would: the tab's own select handlers run as after a click.

Gradio covers an event's outputs while it is pending, and that cover is what kept a click made during the
page load from being undone by the load's late reply (it fills the pickers). The load no longer outputs the
Tabs, so the page draws that cover itself: the tabs take no pointer events until the load has answered."""
from __future__ import annotations

import gradio as gr

TABS_ID = "atelier-tabs"
READY_CLASS = "atelier-ready"  # set on <html> once the page load has answered (or failed)

CSS = f"html:not(.{READY_CLASS}) #{TABS_ID} {{pointer-events: none; opacity: .6;}}\n"

SHOW_TAB_JS = """(tab) => { if (tab) { const b = document.querySelector(`button[data-tab-id="${tab}"]`);
  if (b) b.click(); } return []; }"""

PAGE_READY_JS = ("(tab) => { (" + SHOW_TAB_JS + ")(tab); document.documentElement.classList.add('"
                 + READY_CLASS + "'); return []; }")


def tab_target() -> gr.Textbox:
    """The hidden textbox the handlers write a tab id into (one per page)."""
    return gr.Textbox(visible=False, elem_id="page-show-tab")


def then_show_tab(event, target: gr.Textbox):
    """After `event`, show the tab whose id it wrote into `target`."""
    return event.then(None, target, None, js=SHOW_TAB_JS)


def then_page_ready(load_event, target: gr.Textbox):
    """After the page load (answered or failed: `.then` runs either way), show the tab it named and open the
    tabs to clicks."""
    return load_event.then(None, target, None, js=PAGE_READY_JS)
