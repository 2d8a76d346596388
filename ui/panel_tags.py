"""The Dataset tab's tag editor (an accordion): the dataset's tags with counts, images picked by tag, an operation
across them (ui/tag_edits.py) previewed, applied and undone with the bulk tools' apply/undo, and one image of
the selection large with its caption as removable tag chips (typing adds one, with the dataset's tags as
suggestions). ui/tab_dataset.py places it (`layout`) and wires it (`wire`) with its own view functions."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from trainer.data.captions import split_tags
from ui import dataset_files as df
from ui import tag_edits as te
from ui.paths import UnsafePath

HELP = ("Pick images by their tags (or click a tag in the table), choose an operation, preview it, apply it. "
        "Tags compare as the trainer counts them, in lower case. “Keep first N” holds each caption's first N tags "
        "(the run's keep_tokens, e.g. 1 for a trigger word) in place: sorting and “move to front” never move them.")


def layout(w: SimpleNamespace) -> None:
    """The accordion's widgets, as attributes `te_*` of `w` (the Dataset tab's widgets)."""
    with gr.Accordion("Tag editor", open=False, elem_id="ds-tagedit") as w.te_acc:
        gr.Markdown(HELP)
        with gr.Row():
            # allow_custom_value on the pickers: an event may carry a tag (an image) an edit has just renamed
            # away; Gradio would refuse the whole event, here it simply matches nothing
            w.te_has = gr.Dropdown(choices=[], value=[], multiselect=True, allow_custom_value=True,
                                   label="Images with all of these tags", elem_id="ds-te-has", scale=3)
            w.te_none = gr.Dropdown(choices=[], value=[], multiselect=True, allow_custom_value=True,
                                    label="… and none of these", elem_id="ds-te-none", scale=3)
            w.te_keep = gr.Number(value=0, precision=0, minimum=0, maximum=100, label="Keep first N tags in place",
                                  info="The run's keep_tokens (1 for a trigger word).", elem_id="ds-te-keep", scale=2)
        w.te_sel = gr.Markdown(elem_id="ds-te-selected")
        with gr.Row():
            w.te_op = gr.Dropdown([(label, op) for op, label in te.OPS.items()], value="rename", label="Operation",
                                  elem_id="ds-te-op")
            w.te_tag = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label="Tag",
                                   elem_id="ds-te-tag")
            w.te_new = gr.Textbox(label="New name (rename)", elem_id="ds-te-new")
        with gr.Row():
            w.te_preview_btn = gr.Button("Preview", elem_id="ds-te-preview")
            w.te_apply_btn = gr.Button("Apply to the selected images", variant="primary", elem_id="ds-te-apply")
            w.te_undo_btn = gr.Button("Undo last tag edit", elem_id="ds-te-undo")
        w.te_msg = gr.Markdown(elem_id="ds-te-msg")
        w.te_plan = gr.Dataframe(headers=["image", "caption now", "caption after"], interactive=False, wrap=True,
                                 label="Preview (nothing is written until you apply)", elem_id="ds-te-plan")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=220):
                w.te_counts = gr.Dataframe(headers=["tag", "images"], interactive=False, max_height=440,
                                           label="Tags (click one to pick its images)", elem_id="ds-te-counts")
            with gr.Column(scale=3, min_width=300):
                w.te_image = gr.Dropdown(choices=[], allow_custom_value=True, label="Image of the selection",
                                         elem_id="ds-te-image")
                w.te_big = gr.Image(type="filepath", interactive=False, height=400, show_label=False,
                                    buttons=["fullscreen"], elem_id="ds-te-big")
            with gr.Column(scale=3, min_width=300):
                w.te_chips = gr.Dropdown(choices=[], value=[], multiselect=True, allow_custom_value=True,
                                         label="Its tags (× removes one; type one and press Enter to add it)",
                                         info="Saved as you change them.", elem_id="ds-te-chips")
                w.te_image_msg = gr.Markdown(elem_id="ds-te-image-msg")
    w.te_undo = gr.State(None)  # (dataset, CaptionUndo, {new name: old name} of a rename) of the last tag edit
    # {"rel", "caption"}: the caption the chips were made from; chips are saved only over that same caption, so
    # chips shown before an edit elsewhere (the caption editor) never write the older tags back
    w.te_base = gr.State(None)
    w.te_open = gr.State(False)  # whether the accordion is open: a closed one is not kept up to date


def _chip_tags(caption: str) -> list[str]:
    """A caption's tags as chips; the lines of a multi-line caption joined as the trainer joins them."""
    return split_tags(" ".join(caption.splitlines()))


def _choices(counts: list[tuple[str, int]]) -> list[tuple[str, str]]:
    return [(f"{tag} ({n})", tag) for tag, n in counts]


def _sel_outs(w: SimpleNamespace) -> list:
    """What a selection redraws: its sentence, the image picker, the large preview and its chips."""
    return [w.te_sel, w.te_image, w.te_big, w.te_chips, w.te_base]


def _panel_outs(w: SimpleNamespace) -> list:
    """What the whole panel redraws: the tag table, the pickers and the selection."""
    return [w.te_counts, w.te_has, w.te_none, w.te_tag, *_sel_outs(w)]


def _image_view(root, rel, choices=None):
    """(large preview, its tags as chips, te_base) of one image; choices: the chips' suggestions, when they
    changed."""
    more = {} if choices is None else {"choices": choices}
    if not rel:
        return gr.update(value=None, label="Image"), gr.update(value=[], **more), None
    big, _skip = df.preview(root, rel, df.LARGE_SIDE)
    caption = df.read_caption(root / rel)
    return (gr.update(value=str(big), label=rel), gr.update(value=_chip_tags(caption), **more),
            {"rel": rel, "caption": caption})


def _selection(root, has, none, current=None, choices=None, view=None):
    """_sel_outs for the images with all of `has` and none of `none`."""
    caps = te.captions(root, view)
    rels = te.select(caps, has or [], none or [])
    if has or none:
        said = f"**{len(rels)}** of {len(caps)} image(s) selected."
    else:
        said = f"No tag picked: an operation applies to all **{len(caps)}** image(s)."
    pick = current if current in rels else (rels[0] if rels else None)
    return (said, gr.update(choices=rels, value=pick), *_image_view(root, pick, choices))


def _panel_view(root, has, none, tag, current):
    """_panel_outs: the tag table, pickers and selection from the caption files as they are now."""
    view = df.dataset_view(root)  # listed once for the table and the selection
    counts = df.tag_frequency(root, view)
    known = {t for t, _ in counts}
    has = [t for t in has or [] if t in known]
    none = [t for t in none or [] if t in known]
    choices = _choices(counts)
    return ([list(c) for c in counts] or None, gr.update(choices=choices, value=has),
            gr.update(choices=choices, value=none), gr.update(choices=choices, value=tag),
            *_selection(root, has, none, current, [t for t, _ in counts], view))


def _rename_picked(has, tag, names):
    """The picked tags and the Tag box after a rename ({old key: new key})."""
    return [names.get(te.key(t), t) for t in has or []], names.get(te.key(tag or ""), tag)


def wire(studio, w: SimpleNamespace, tab: SimpleNamespace) -> None:
    """tab: the Dataset tab's `root(studio, name)`, `tags(root)` (its tag table `w.tags`), `autosave(studio, ed,
    text)` (its caption box saved into its image), `then_doctor(event)` and `in_order` (its event queue)."""
    def root_of(name):
        try:
            return tab.root(studio, name)
        except UnsafePath as e:
            raise gr.Error(str(e))

    # the order of these calls is the order the events are registered in (their api names count up in it)
    _wire_panel(w, tab, root_of)
    _wire_selection(w, tab, root_of)
    _wire_chips(w, tab, root_of)
    _wire_edits(studio, w, tab, root_of)


def _wire_panel(w: SimpleNamespace, tab: SimpleNamespace, root_of) -> None:
    """The whole panel, drawn when the accordion opens and again when the dataset's files change while open."""
    panel_outs = _panel_outs(w)

    def on_panel(name, has, none, tag, current):
        return _panel_view(root_of(name), has, none, tag, current)

    panel_ins = [w.ds_name, w.te_has, w.te_none, w.te_tag, w.te_image]
    w.te_acc.expand(lambda *a: (True, *on_panel(*a)), panel_ins, [w.te_open, *panel_outs], **tab.in_order)
    w.te_acc.collapse(lambda: False, None, w.te_open)

    def on_files_changed(is_open, *args):
        """Another dataset picked, or the caption editor or bulk tools wrote: a closed panel waits for its
        opening (it would only add work to every step of the caption editor)."""
        return on_panel(*args) if is_open else [gr.skip()] * len(panel_outs)

    for changed in (w.ds_name, w.tags):  # read-only, so outside the tab's queue, and without a spinner
        changed.change(on_files_changed, [w.te_open, *panel_ins], panel_outs, concurrency_limit=1,
                       concurrency_id="ds-tag-panel", show_progress="hidden")


def _wire_selection(w: SimpleNamespace, tab: SimpleNamespace, root_of) -> None:
    """Picking images by tag (the pickers, a click in the tag table) and one image of the selection."""
    sel_outs = _sel_outs(w)

    def on_select(name, has, none, current):
        return _selection(root_of(name), has, none, current)

    sel_ins = [w.ds_name, w.te_has, w.te_none, w.te_image]
    w.te_has.input(on_select, sel_ins, sel_outs, **tab.in_order)
    w.te_none.input(on_select, sel_ins, sel_outs, **tab.in_order)

    def on_count_click(name, has, none, current, evt: gr.SelectData):
        tag = (evt.row_value or [None])[0]
        if not tag:
            return [gr.skip()] * (2 + len(sel_outs))
        has = [*(has or []), tag] if tag not in (has or []) else list(has)
        return (has, tag, *_selection(root_of(name), has, none, current))

    w.te_counts.select(on_count_click, sel_ins, [w.te_has, w.te_tag, *sel_outs], **tab.in_order)

    def on_image(name, rel):
        root = root_of(name)
        try:
            df.dataset_image(root, rel)
        except (UnsafePath, ValueError) as e:
            raise gr.Error(str(e))
        return _image_view(root, rel)

    w.te_image.input(on_image, [w.ds_name, w.te_image], [w.te_big, w.te_chips, w.te_base], **tab.in_order)


def _wire_chips(w: SimpleNamespace, tab: SimpleNamespace, root_of) -> None:
    """The picked image's tags as chips, saved as its caption as they change."""
    chips_wrote: dict[tuple[str, str], str] = {}  # (dataset, image) -> the caption the chips saved last

    def on_chips(name, rel, chips, base, ed):
        """Save the chips as the image's caption (atomically); the caption editor's box follows when it shows
        the same image, so its save-on-switch cannot write the old text back."""
        root = root_of(name)
        try:
            img = df.dataset_image(root, rel)
            tags, seen = [], set()
            for t in chips or []:  # a tag typed twice is kept once, where it came first
                if te.key(te.check_tag(t)) not in seen:
                    seen.add(te.key(t))
                    tags.append(t.strip())
        except (UnsafePath, ValueError) as e:
            raise gr.Error(str(e))
        now = df.read_caption(img)
        # the chips sent were made from `base`, or from what the chips saved since (a second × pressed before
        # the first one's reply came back)
        if not base or base.get("rel") != rel or now not in (base.get("caption"), chips_wrote.get((name, rel))):
            return (f"`{rel}` was changed elsewhere since its tags were shown here: they are reloaded, nothing was "
                    f"written. Make your change again.", gr.skip(), gr.skip(), gr.update(value=_chip_tags(now)),
                    {"rel": rel, "caption": now})
        if _chip_tags(now) == tags:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        df.write_caption(img, te.join_tags(tags))
        text = chips_wrote[(name, rel)] = df.read_caption(img)
        same = bool(ed) and ed.get("rel") == rel and ed.get("ds") == name
        # the tab's own tag table (w.tags) is left for its next view: its change would refresh this panel, and
        # redraw the chips under the pointer of someone removing the next one
        return (f"Saved the tags of `{rel}`.", [list(c) for c in df.tag_frequency(root)] or None,
                text if same else gr.skip(), gr.skip(), {"rel": rel, "caption": text})

    tab.then_doctor(w.te_chips.input(on_chips, [w.ds_name, w.te_image, w.te_chips, w.te_base, w.editing],
                                     [w.te_image_msg, w.te_counts, w.caption, w.te_chips, w.te_base],
                                     **tab.in_order))


def _wire_edits(studio, w: SimpleNamespace, tab: SimpleNamespace, root_of) -> None:
    """An operation across the selected images: previewed, applied (remembered for undo) and undone."""
    def plan(name, op, tag, new, has, none, keep):
        root = root_of(name)
        view = df.dataset_view(root)
        rels = te.select(te.captions(root, view), has or [], none or [])
        try:
            return root, te.plan_tag_edit(root, op, tag or "", new or "", rels, int(keep or 0), view)
        except ValueError as e:
            raise gr.Error(str(e))

    plan_ins = [w.ds_name, w.te_op, w.te_tag, w.te_new, w.te_has, w.te_none, w.te_keep]

    def on_preview(*args):
        _root, p = plan(*args)
        msg = (f"{len(p)} caption(s) would change (first 100 below). Nothing is written until you apply."
               if p else "No caption would change.")
        return msg, [list(r) for r in p[:100]] or None

    w.te_preview_btn.click(on_preview, plan_ins, [w.te_msg, w.te_plan], **tab.in_order)

    write_outs = [w.caption, w.caption_msg, *_panel_outs(w)]

    def after_write(name, ed, saved, panel_ins_values):
        """write_outs after a write: the caption editor's box shows its image's caption as it is now (or its
        save-on-switch would write the old text back), and the panel. Nothing else of the tab shows captions (a
        whole view of it costs seconds at 500 images). The tab's tag table follows in a step of its own
        (`then_tags`): its change refreshes this panel, and an event made by this reply would read the pickers
        before the reply's values reached them."""
        pick = ed.get("rel") if ed and ed.get("ds") == name else None
        caption = df.read_caption(root_of(name) / pick) if pick else gr.skip()
        return (caption, saved or gr.skip(), *_panel_view(root_of(name), *panel_ins_values))

    def then_tags(event) -> None:
        tab.then_doctor(event.then(lambda name: tab.tags(root_of(name)), w.ds_name, w.tags, **tab.in_order))

    def on_apply(name, op, tag, new, has, none, keep, ed, text, current):
        saved = tab.autosave(studio, ed, text)  # an unsaved caption edit is saved before the plan reads captions
        root, p = plan(name, op, tag, new, has, none, keep)
        done = df.apply_caption_changes(root, p)
        msg = f"Changed {len(p)} caption(s)." + (" “Undo last tag edit” puts them back." if p else "")
        names = {te.key(tag): te.key(new)} if op == "rename" and p else {}
        has, tag = _rename_picked(has, tag, names)  # the renamed tag's images stay picked under the new name
        last = (name, done, {b: a for a, b in names.items()}) if p else gr.skip()
        return (" ".join(x for x in (saved, msg) if x), None, last, *after_write(name, ed, saved,
                                                                              [has, none, tag, current]))

    then_tags(w.te_apply_btn.click(on_apply, [*plan_ins, w.editing, w.caption, w.te_image],
                                   [w.te_msg, w.te_plan, w.te_undo, *write_outs], **tab.in_order))

    def on_undo(name, last, ed, text, has, none, tag, current):
        if not last:
            return "Nothing to undo.", gr.skip(), *([gr.skip()] * len(write_outs))
        saved = tab.autosave(studio, ed, text)
        ds, done, names = last
        has, tag = _rename_picked(has, tag, names)
        try:
            restored, kept = df.undo_caption_changes(root_of(ds), done)
        except OSError as e:
            raise gr.Error(str(e))
        msg = f"Undid the last tag edit on `{ds}`: restored {restored} caption(s)."
        if kept:
            msg += f" Left {len(kept)} alone that were edited since: {', '.join(kept[:5])}."
        return (" ".join(x for x in (saved, msg) if x), None, *after_write(name, ed, saved, [has, none, tag, current]))

    then_tags(w.te_undo_btn.click(
        on_undo, [w.ds_name, w.te_undo, w.editing, w.caption, w.te_has, w.te_none, w.te_tag, w.te_image],
        [w.te_msg, w.te_undo, *write_outs], **tab.in_order))
