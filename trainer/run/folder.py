"""Where everything of a run lives, and how its process ends: one layout for the trainer and the GUI.

Torch-free (the GUI imports it). The run folder is the whole interface between the two processes:

    config.toml        the settings the run was created with (GUI or CLI writes it once)
    config.used.toml   the settings the trainer actually ran with (config.toml + --set), rewritten at
                       each start: the truth about a run, shown by the GUI and reused by a resume
    events.jsonl       trainer → GUI: what happened (trainer.run.events documents every type)
    control/           GUI → trainer: one file per request (stop, sample_now, save_now), consumed once
    trainer.pid        the process the GUI started; exit.json its exit code, trainer.log its output
    dataset/           the GUI's copy of the images it trained on
    samples/           preview PNGs; checkpoints/ resumable states; output/ adapters; export/ edited
                       adapters and bundles
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# exit codes of `python -m trainer train`, and what the GUI calls a run that ended with each
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_STOPPED = 0, 1, 2, 3
EXIT_STATES = {EXIT_OK: "finished", EXIT_FAILED: "failed", EXIT_CONFIG: "failed", EXIT_STOPPED: "stopped"}
FINAL_STATES = ("finished", "stopped", "failed")


@dataclass(frozen=True)
class RunFolder:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def config_used(self) -> Path:
        return self.root / "config.used.toml"

    @property
    def effective_config(self) -> Path:
        """The config actually used when the trainer has started once, else the one it was created with."""
        return self.config_used if self.config_used.is_file() else self.config

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def control(self) -> Path:
        return self.root / "control"

    @property
    def pid(self) -> Path:
        return self.root / "trainer.pid"

    @property
    def exit(self) -> Path:
        return self.root / "exit.json"

    @property
    def log(self) -> Path:
        return self.root / "trainer.log"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def export(self) -> Path:
        return self.root / "export"

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])
