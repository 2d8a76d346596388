"""`python -m trainer caption DATASET_DIR`: caption a dataset's images with a tagger or BLIP.

Each caption file is replaced atomically (trainer.run.atomic), so a kill at any moment leaves every caption
either as it was or as the captioner made it. An image that cannot be read or captioned is reported by name
(an `error` event) and the rest are captioned. SIGTERM stops between images. With --job-dir, progress goes
to that folder's events.jsonl (trainer.caption.events), which is how the studio follows the job."""
from __future__ import annotations

import argparse
import signal
import sys
import traceback
from pathlib import Path

from trainer.caption import settings as cs
from trainer.caption.events import CaptionEventWriter
from trainer.config import ConfigError
from trainer.data.captions import read_caption, split_tags
from trainer.data.images import ImageError, load_image
from trainer.data.scan import Item, list_dataset
from trainer.run.atomic import atomic_write_text
from trainer.run.faults import crash_point
from trainer.run.folder import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_STOPPED


class _Stop:
    """SIGTERM sets the flag; the loop checks it between images."""
    requested = False

    @classmethod
    def install(cls) -> None:
        cls.requested = False
        signal.signal(signal.SIGTERM, lambda *_: setattr(cls, "requested", True))


def select_images(root: Path, s: cs.CaptionSettings) -> tuple[list[Item], list[str]]:
    """(the images to caption, problems with the selection file's lines)."""
    if not root.is_dir():
        raise ConfigError(f"{root}: no such dataset folder")
    items = list_dataset(root).items
    if s.images == "missing":
        return [it for it in items if not it.caption.strip()], []
    if s.images == "all":
        return items, []
    if not s.selection_file:
        raise ConfigError("Selection file (--selection-file): empty; Which images = selection needs a file "
                          "listing the images (one path relative to the dataset per line)")
    try:
        lines = Path(s.selection_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"Selection file (--selection-file): {s.selection_file}: {e}") from None
    by_rel = {it.rel: it for it in items}
    wanted = [ln.strip().replace("\\", "/") for ln in lines if ln.strip()]
    return ([by_rel[r] for r in dict.fromkeys(wanted) if r in by_rel],
            [f"{r}: listed in the selection file but not an image of this dataset" for r in wanted if r not in by_rel])


def compose(old: str, new: str, s: cs.CaptionSettings) -> str:
    """The caption written: the new one (mode overwrite) or the old one followed by the new (append), with
    the trigger word first, once."""
    trigger = s.trigger.strip()
    if s.backend == "tags":
        tags = (split_tags(old) if s.mode == "append" else []) + split_tags(new)
        tags = [t for t in dict.fromkeys(tags) if t != trigger]  # each tag once, in order
        return ", ".join(([trigger] if trigger else []) + tags)
    text = new.strip()
    if s.mode == "append" and old.strip():
        text = old.strip() + (" " if old.strip()[-1] in ".,;!?" else ". ") + text
    if trigger and not (text == trigger or text.startswith(trigger + ",") or text.startswith(trigger + " ")):
        text = f"{trigger}, {text}" if text else trigger
    return text


def load_backend(s: cs.CaptionSettings, emit=None):
    """emit(type, **fields): where a hub download reports its progress."""
    from trainer.caption import source

    if s.backend == "tags":
        from trainer.caption.tagger import NEEDS, Tagger

        return Tagger(source.resolve(s.model, "tags", NEEDS, emit), s)
    from trainer.caption.natural import NEEDS, Blip

    return Blip(source.resolve(s.model, "natural", NEEDS, emit), s)


def caption_path(root: Path, it: Item) -> Path:
    """The caption file the trainer reads for the image (its existing sidecar), else `<stem>.txt`."""
    return root / it.caption_file if it.caption_file else (root / it.rel).with_suffix(".txt")


def run(root: Path, s: cs.CaptionSettings, events: CaptionEventWriter, say=print) -> int:
    items, problems = select_images(root, s)
    backend = load_backend(s, events.emit)
    events.emit("started", total=len(items), backend=s.backend, model=s.model, mode=s.mode, images=s.images)
    for p in problems:
        file, _, reason = p.partition(": ")
        events.emit("error", message=reason, file=file)
        say(f"error: {p}")
    counts = {"written": 0, "skipped": 0, "failed": 0, "unchanged": 0}
    done = 0
    for i, it in enumerate(items):
        if _Stop.requested:
            break
        crash_point("caption", i)
        crash_point("caption-sigterm", i)
        dest = caption_path(root, it)
        old = read_caption(dest)[0] if dest.is_file() else ""
        if s.mode == "skip" and old.strip():
            result = "skipped"
        else:
            try:
                new = backend.caption(load_image(root / it.rel).image)
            except ImageError as e:
                new, result = None, "failed"
                events.emit("error", message=e.reason, file=it.rel)
            except Exception as e:  # one image the model cannot take must not cost the others
                new, result = None, "failed"
                events.emit("error", message=f"{type(e).__name__}: {e}", file=it.rel)
            if new is not None:
                text = compose(old, new, s)
                if text == old.strip():
                    result = "unchanged"
                else:
                    atomic_write_text(dest, text + "\n", before_replace=lambda: crash_point("caption-rename", i))
                    result = "written"
        counts[result] += 1
        done += 1
        events.emit("progress", done=done, total=len(items), file=it.rel, result=result)
        say(f"[{done}/{len(items)}] {it.rel}: {result}")
    status = "stopped" if _Stop.requested and done < len(items) else "finished"
    events.emit("finished", status=status, done=done, total=len(items), written=counts["written"],
                skipped=counts["skipped"], failed=counts["failed"])
    say(f"{status}: {counts['written']} written, {counts['unchanged']} unchanged, {counts['skipped']} skipped, "
        f"{counts['failed']} failed of {len(items)}")
    return EXIT_STOPPED if status == "stopped" else EXIT_OK


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer caption",
                                 description="Write caption files for a dataset's images with a tagger or BLIP.")
    ap.add_argument("dataset", help="the dataset folder (its images, in kohya-style N_name subfolders too)")
    ap.add_argument("--job-dir", help="write progress events here (events.jsonl), for the studio")
    cs.add_arguments(ap)
    a = ap.parse_args(argv)
    events = CaptionEventWriter(Path(a.job_dir or "."), enabled=bool(a.job_dir))
    _Stop.install()

    def fail(message: str, code: int) -> int:
        events.emit("error", message=message)
        events.emit("finished", status="failed", done=0, total=0)
        print(f"error: {message}", file=sys.stderr)
        return code

    try:
        s = cs.from_namespace(a)
        return run(Path(a.dataset).expanduser(), s, events)
    except ConfigError as e:
        return fail(str(e), EXIT_CONFIG)
    except Exception as e:  # the job's folder says why; the traceback goes to the log
        traceback.print_exc()
        return fail(f"{type(e).__name__}: {e}", EXIT_FAILED)
