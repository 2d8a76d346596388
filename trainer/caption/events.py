"""The captioner's job folder: the run folder's layout (trainer.run.folder: events.jsonl, trainer.pid,
exit.json, trainer.log) with its own event types, and the fold the studio shows. Torch-free.

A job is stopped with SIGTERM: the captioner finishes the image it is on, writes `finished` (stopped) and
exits with EXIT_STOPPED."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainer.run.events import EventTail, EventType, EventWriter
from trainer.run.folder import RunFolder

CAPTION_EVENTS: dict[str, EventType] = {
    "download": EventType("the captioner's model is being downloaded from the hub (before `started`): done and "
                          "total bytes of its files so far (total grows as each file's size becomes known)",
                          ("model", "done", "total")),
    "started": EventType("the model is loaded; total images will be captioned (after the image selection)",
                         ("total", "backend", "model", "mode", "images")),
    "progress": EventType("one image done (done of total); file its path relative to the dataset; result "
                          "written | unchanged | skipped (mode skip and it has a caption) | failed",
                          ("done", "total", "file", "result")),
    "error": EventType("an image that could not be captioned (file set; the others go on), or why the job "
                       "failed (no file)", ("message",), ("file",)),
    "finished": EventType("the last event: status finished | stopped | failed and the counts",
                          ("status", "done", "total"), ("written", "skipped", "failed")),
}


class CaptionEventWriter(EventWriter):
    schema = CAPTION_EVENTS


@dataclass
class CaptionView:
    """What the studio shows of a caption job, folded from its events (read incrementally)."""
    job_dir: Path
    state: str = "created"  # created | running | finished | stopped | failed
    done: int = 0
    total: int = 0
    file: str = ""
    written: int = 0
    errors: list[str] = field(default_factory=list)  # "file: reason" of each image that failed, or the job's error
    download: dict | None = None  # the latest download event, until the model is loaded (`started`)
    count: int = 0

    def __post_init__(self):
        self.job_dir = Path(self.job_dir)
        self._tail = EventTail(RunFolder(self.job_dir).events)

    def update(self) -> "CaptionView":
        new = self._tail.poll()
        if self._tail.restarted:  # a new job in the same folder
            self.__init__(self.job_dir)
            new = self._tail.poll()
        for ev in new:
            self.count += 1
            t = ev.get("type")
            if t == "download":
                self.state, self.download = "running", ev
            elif t == "started":  # a job run again in the same folder (the CLI appends) starts its counts afresh
                self.state, self.total, self.download = "running", int(ev.get("total") or 0), None
                self.done, self.written, self.file, self.errors = 0, 0, "", []
            elif t == "progress":
                self.done, self.total, self.file = int(ev["done"]), int(ev["total"]), str(ev["file"])
                self.written += ev.get("result") == "written"
            elif t == "error":
                self.errors.append(f"{ev['file']}: {ev['message']}" if ev.get("file") else str(ev.get("message")))
            elif t == "finished":
                self.state = ev.get("status", "failed")
        return self
