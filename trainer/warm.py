"""`python -m trainer warm`: a trainer process started before the user presses Train.

Importing torch, diffusers (which imports torch's compiler) and peft is most of a run's start on a CPU
machine (10-20 s on 2 cores), and it does not depend on the run. The studio starts this process when the
user heads for training, it imports all of that and waits; pressing Train hands it the run's `train`
arguments and its log file as one JSON line on stdin, and from then on it is that run's trainer process,
exactly as if `python -m trainer train …` had been started then (same code path, same exit codes).

The request is read while the imports run, so a run handed to a process that is still importing is its
run from then on (its output and first event go to the run at once) and starts training when they finish.

Only runs that do not need bitsandbytes (no QLoRA, no 8-bit optimizer) can use it: bitsandbytes is hidden
from peft for the whole process before peft is imported (trainer/imports.py), so the studio starts those
runs cold. Stdin closing before a request (the studio quit) ends the process with 0.
"""
from __future__ import annotations

import json
import os
import sys
import threading

from trainer.imports import keep_bitsandbytes_unloaded, quiet_library_notes


# (module, names read from it: diffusers and transformers import a class's module on first access)
PRELOAD = (
    ("trainer.train.loop", ()),  # torch
    ("trainer.models.loading", ()),
    ("trainer.adapter.network", ()),
    ("diffusers", ("AutoencoderKL", "StableDiffusionPipeline", "StableDiffusionXLPipeline")),
    ("peft", ("LoraConfig", "inject_adapter_in_model")),
    ("transformers", ("CLIPTextModel", "CLIPTextModelWithProjection")),
)


def preload() -> None:
    """What every non-quantised run imports, in the order a run would."""
    import importlib

    keep_bitsandbytes_unloaded()
    quiet_library_notes()
    for module, names in PRELOAD:
        loaded = importlib.import_module(module)
        for name in names:
            getattr(loaded, name)


def take_request(line: str) -> tuple[list[str], str]:
    """(train arguments, log path) from the studio's request line; ValueError if it is not one."""
    req = json.loads(line)
    if not isinstance(req, dict):
        raise ValueError("a warm trainer request is a JSON object")
    argv, log = req.get("argv"), req.get("log")
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv) and isinstance(log, str) and log):
        raise ValueError("a warm trainer request is {\"argv\": [str, ...], \"log\": str}")
    return argv, log


def redirect_output(log: str) -> None:
    """stdout and stderr (the file descriptors, so library and C output too) into the run's log."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def main(argv: list[str]) -> int:
    import importlib

    from trainer.cli import announce_run, train_command

    importlib.import_module("trainer.run.events")  # before the request thread writes the first event with it

    request: dict = {}
    out_lock, got = threading.Lock(), threading.Event()

    def read_request() -> None:
        # read while the imports run: a run handed over mid-import writes to its own log (and its first
        # event) at once, so the studio sees it running, and trains as soon as the imports are done
        line = sys.stdin.readline()
        if line.strip():
            try:
                request["argv"], log = take_request(line)
            except ValueError as e:
                request["error"] = str(e)
            else:
                with out_lock:
                    redirect_output(log)
                announce_run(request["argv"])
        got.set()

    threading.Thread(target=read_request, daemon=True, name="warm-request").start()
    preload()
    with out_lock:
        if not got.is_set():
            print("warm: ready", flush=True)
    got.wait()
    if "error" in request:
        print(f"warm: {request['error']}", file=sys.stderr)
        return 2
    if "argv" not in request:
        return 0  # the studio let it go without a run
    return train_command(request["argv"], bitsandbytes_hidden=True, announced=True)
