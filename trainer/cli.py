"""`python -m trainer <command>`: train, options, check, generate, meta, merge, resize, doctor, calibrate, queue, caption."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.config import ConfigError, iter_fields, field_meta, load_config, load_preset, save_config
from trainer.imports import keep_bitsandbytes_unloaded, needs_bitsandbytes, quiet_library_notes
from trainer.run.folder import EXIT_CONFIG


def _train_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m trainer train",
                                 description="Train a LoRA. The run folder is the config's folder (or --run-dir).")
    ap.add_argument("config", help="config.toml (full config) or a preset name/path with --preset")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override an option, e.g. --set network.rank=8 (repeatable)")
    ap.add_argument("--preset", action="store_true", help="treat CONFIG as a partial preset over the defaults")
    ap.add_argument("--run-dir", help="where events, samples, checkpoints and the adapter go")
    ap.add_argument("--resume", action="store_true", help="continue from the newest saved state in the run folder")
    ap.add_argument("--quiet", action="store_true")
    return ap


def _run_dir(a: argparse.Namespace) -> Path:
    return Path(a.run_dir) if a.run_dir else Path(a.config).resolve().parent


def announce_run(argv: list[str]) -> None:
    """The first event of the run `train ARGV` will train, for a process that has more to import first
    (trainer/warm.py); nothing for arguments that would not start a run."""
    try:
        a = _train_parser().parse_args(argv)
    except SystemExit:
        return
    if not a.resume and _run_dir(a).is_dir():
        _announce(_run_dir(a))


def train_command(argv: list[str], bitsandbytes_hidden: bool = False, announced: bool = False) -> int:
    """`train ARGV`. bitsandbytes_hidden: this process has already hidden bitsandbytes (a warm trainer,
    trainer/warm.py), so a run that needs it is refused here rather than failing deep in peft. announced:
    that process has written the run's first event already."""
    a = _train_parser().parse_args(argv)
    try:
        cfg = load_preset(a.config, a.overrides) if a.preset else load_config(a.config, a.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    run_dir = _run_dir(a)
    run_dir.mkdir(parents=True, exist_ok=True)
    if a.run_dir or a.overrides or a.preset:
        save_config(cfg, run_dir / "config.toml") if not (run_dir / "config.toml").exists() else None
    if a.resume:  # checked before the first event: that event would make the finished run look running
        from trainer.run.events import nothing_to_resume

        refusal = nothing_to_resume(run_dir, cfg.schedule.max_train_steps)
        if refusal:
            print(f"config error: {refusal}", file=sys.stderr)
            return EXIT_CONFIG
    if bitsandbytes_hidden and needs_bitsandbytes(cfg):
        print("config error: this trainer process was started without bitsandbytes; QLoRA and the 8-bit "
              "optimizer need a fresh `python -m trainer train`", file=sys.stderr)
        return EXIT_CONFIG
    if not announced or a.resume:
        _announce(run_dir)
    if not needs_bitsandbytes(cfg):
        keep_bitsandbytes_unloaded()
    from trainer.train.loop import train  # torch, diffusers, peft: seconds

    return train(cfg, run_dir, resume=a.resume, quiet=a.quiet)


def _announce(run_dir: Path) -> None:
    """The run's first event, before the heavy imports, so the GUI shows progress within a second
    (under torchrun only rank 0 writes the run folder)."""
    import os

    from trainer.run.events import EventWriter

    if os.environ.get("RANK", "0") == "0":
        EventWriter(run_dir).emit("phase", phase="loading model", done=0, total=0)


def _options(argv: list[str]) -> int:
    """List every option of the schema (what --set accepts)."""
    for section, key, finfo, _ in iter_fields():
        m = field_meta(finfo)
        rng = ""
        if "ge" in m or "le" in m:
            rng = f" [{m.get('ge', '')}..{m.get('le', '')}]"
        if "choices" in m:
            rng = f" {{{', '.join(map(str, m['choices']))}}}"
        print(f"{section}.{key} = {finfo.get_default(call_default_factory=True)!r}{rng}\n    {m['label']}: {m['help']}")
    return 0


def _lazy(module: str):
    """A command whose module is imported only when it runs; none of these quantise, so bitsandbytes
    stays unloaded."""
    def run(argv: list[str]) -> int:
        import importlib

        keep_bitsandbytes_unloaded()
        return importlib.import_module(module).main(argv) or 0
    return run


COMMANDS = {
    "train": train_command,
    "options": _options,
    "check": _lazy("trainer.formats.check"),
    "meta": _lazy("trainer.formats.meta_edit"),
    "merge": _lazy("trainer.tools.merge"),
    "resize": _lazy("trainer.tools.resize"),
    "generate": _lazy("trainer.tools.generate"),
    "doctor": _lazy("trainer.data.doctor_cli"),
    "calibrate": _lazy("trainer.calibrate"),
    "queue": _lazy("trainer.run.queue"),
    "caption": _lazy("trainer.caption.job"),
    "warm": _lazy("trainer.warm"),  # the studio's pre-started trainer (trainer/warm.py)
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_library_notes()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m trainer {" + ",".join(COMMANDS) + "} ...", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])
