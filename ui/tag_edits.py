"""The tag editor's operations on a dataset's comma-separated captions: pick images by tag, and add / remove /
rename / move to front / sort tags across them. No Gradio and no torch, so it is testable on its own.

A tag is what the trainer's `split_tags` cuts a caption into, and tags are compared as the trainer counts them
(ss_tag_frequency, `ui.dataset_files.tag_frequency`): in lower case, so `Red hair` and `red hair` are one tag.
An edit is a plan of (image, caption now, caption after) like the bulk caption tools' (nothing is written until
`ui.dataset_files.apply_caption_changes`, whose undo leaves alone captions edited since).

keep: the first `keep` tags of each caption (the run's keep_tokens: a trigger word, a character name) stay where
they are. Sorting and "move to front" never move them, "add" never goes before them; only an op that names one of
them (remove it, rename it) changes it."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from trainer.data.captions import split_tags
from trainer.data.scan import Scan

from ui import dataset_files as df

OPS = {  # op -> what the page calls it
    "add": "Add tag",
    "remove": "Remove tag",
    "rename": "Rename tag",
    "front": "Move tag to front",
    "sort_count": "Sort tags by count",
    "sort_alpha": "Sort tags A→Z",
}
NEEDS_TAG = {"add", "remove", "rename", "front"}


def key(tag: str) -> str:
    """How the trainer tells tags apart."""
    return tag.strip().lower()


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(t.strip() for t in tags if t.strip())


def captions(root: Path, view: Scan | None = None) -> dict[str, str]:
    """{image: caption} of the images a run trains on, as the trainer reads them (lines joined). view:
    `df.dataset_view(root)` when the caller has it already (listing 500 images costs a few tenths of a second)."""
    return {it.rel: it.caption for it in (view or df.dataset_view(root)).items}


def select(caps: dict[str, str], has: Iterable[str] = (), has_none: Iterable[str] = ()) -> list[str]:
    """The images whose caption has every tag of `has` and none of `has_none` (all images when both are empty)."""
    want, avoid = {key(t) for t in has if key(t)}, {key(t) for t in has_none if key(t)}
    out = []
    for rel, cap in caps.items():
        tags = {key(t) for t in split_tags(cap)}
        if want <= tags and not avoid & tags:
            out.append(rel)
    return out


def check_tag(tag: str, what: str = "tag") -> str:
    """`tag` stripped, or ValueError saying why it cannot be one tag."""
    tag = (tag or "").strip()
    if not tag:
        raise ValueError(f"{what}: type or pick a tag")
    if "," in tag:
        raise ValueError(f"{what} {tag!r}: a tag cannot hold a comma (commas separate tags)")
    if "\n" in tag or "\r" in tag:
        raise ValueError(f"{what} {tag!r}: a tag is one line")
    return tag


def edit_tags(tags: list[str], op: str, tag: str = "", new: str = "", keep: int = 0,
              counts: dict[str, int] | None = None) -> list[str]:
    """One caption's tags after `op` (see OPS); `counts` ({key: images}) orders sort_count."""
    keep = max(0, int(keep or 0))
    k = key(tag)
    at = [i for i, t in enumerate(tags) if key(t) == k]
    if op == "add":
        return tags if at else [*tags, tag.strip()]
    if op == "remove":
        return [t for t in tags if key(t) != k]
    if op == "rename":
        if not at:
            return tags
        out, seen = [], False
        for t in tags:  # each of the old tag and the new name's copies: only the first one stays, as `new`
            if key(t) in (k, key(new)):
                if not seen:
                    out.append(new.strip())
                seen = True
            else:
                out.append(t)
        return out
    if op == "front":
        if not at:
            return tags
        first = at[0]
        rest = [t for i, t in enumerate(tags) if i != first]
        spot = min(keep, first)  # right after the kept tags; one of them stays where it is
        return [*rest[:spot], tags[first], *rest[spot:]]
    if op in ("sort_count", "sort_alpha"):
        head, tail = tags[:keep], tags[keep:]
        if op == "sort_alpha":
            tail = sorted(tail, key=lambda t: (key(t), t))
        else:
            c = counts or {}
            tail = sorted(tail, key=lambda t: (-c.get(key(t), 0), key(t), t))
        return [*head, *tail]
    raise ValueError(f"unknown tag operation {op!r} (one of {', '.join(OPS)})")


def plan_tag_edit(root: Path, op: str, tag: str = "", new: str = "", selection: Iterable[str] | None = None,
                  keep: int = 0, view: Scan | None = None) -> list[tuple[str, str, str]]:
    """(image, caption now, caption after) for every caption of `selection` (all images when None) that `op`
    changes; nothing is written. Apply it with ui.dataset_files.apply_caption_changes. view: as in `captions`."""
    if op not in OPS:
        raise ValueError(f"unknown tag operation {op!r} (one of {', '.join(OPS)})")
    if op in NEEDS_TAG:
        tag = check_tag(tag)
    if op == "rename":
        new = check_tag(new, "new name")
        if new == tag:
            raise ValueError(f"rename: {tag!r} already has that name")
    view = view or df.dataset_view(root)
    caps = captions(root, view)
    picked = caps.keys() if selection is None else [r for r in dict.fromkeys(selection) if r in caps]
    counts = dict(df.tag_frequency(root, view)) if op == "sort_count" else None
    plan = []
    for rel in picked:
        tags = split_tags(caps[rel])
        after = edit_tags(tags, op, tag, new, keep, counts)
        if after != tags:
            plan.append((rel, caps[rel], join_tags(after)))
    return plan
