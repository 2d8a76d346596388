"""`python -m trainer queue add|list|run`: queue runs for the night and run them one after another.

The queue is the run store's table (trainer/run/store.py) in a data folder, by default the studio's: runs
queued here show in the studio's Runs tab, and the studio's queue and `queue run` never start the same
run (each start is a claim in one SQLite transaction). Each run is `python -m trainer train` in a
subprocess writing its own run folder; its exit code is recorded there (exit.json) and in the store.
Ctrl-C asks the current run to stop gracefully (it saves, then exits) and leaves the rest queued."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainer.config import REPO_ROOT, ConfigError, load_config, load_preset, save_config
from trainer.run.atomic import atomic_write_text
from trainer.run.device import active_run, device_lock, hold
from trainer.run.events import clear_requests, run_view
from trainer.run.folder import EXIT_CONFIG, EXIT_STATES, RunFolder
from trainer.run.store import DB_NAME, RunStore

DEFAULT_DATA_DIR = REPO_ROOT / "data"  # the studio's default data folder (ui/launch.py)
WAIT_S = 5.0  # how often a queue kept waiting by the studio's run looks again


def _store(data_dir: str) -> tuple[RunStore, Path]:
    """The data folder's run store, and the folder."""
    root = Path(data_dir).expanduser().resolve()
    return RunStore(root / DB_NAME), root


def _add(a) -> int:
    try:
        cfg = load_preset(a.config, a.overrides) if a.preset else load_config(a.config, a.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    store, root = _store(a.data_dir)
    name = a.name or cfg.saving.output_name
    run_id = store.new_id(name)
    folder = RunFolder(Path(a.run_dir).expanduser().resolve() if a.run_dir else root / "runs" / run_id)
    if folder.config.exists() or folder.events.exists():
        print(f"error: {folder.root} already holds a run; give another --run-dir", file=sys.stderr)
        return EXIT_CONFIG
    # the run starts later, in the repository folder: a dataset named relative to here is written absolute
    # (one that is not here stays as it is: the trainer looks for it in the repository, as `train` does)
    for key in ("path", "reg_path"):
        text = getattr(cfg.dataset, key)
        if text and Path(text).expanduser().exists():
            setattr(cfg.dataset, key, str(Path(text).expanduser().resolve()))
    save_config(cfg, folder.config)
    store.add(run_id, name, cfg.model.base, a.config if a.preset else "", folder.root, queued=True)
    print(f"queued {run_id} ({folder.root})")
    return 0


def _list(a) -> int:
    store, _ = _store(a.data_dir)
    queued = store.queued()
    others = [r for r in store.list() if r["state"] not in ("queued", "created")]
    for n, r in enumerate(queued, 1):
        print(f"{n:3d}  queued    {r['id']}  {r['folder']}")
    for r in others[:a.finished]:
        print(f"  -  {r['state']:<9} {r['id']}  steps {r['steps']}")
    if not queued:
        print("the queue is empty")
    return 0


class _Interrupt:
    """Ctrl-C while a run trains: the first asks it to stop gracefully (one SIGINT to its own process group,
    so the terminal's signal does not reach it twice), a second gives up on the save; no run starts after."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.count = 0  # Ctrl-Cs received
        self.passed_on = 0  # of those, sent on to `proc`

    def __call__(self, signum, frame):
        self.count += 1
        self.pass_on()

    def watch(self, proc: subprocess.Popen) -> None:
        """`proc` is the run training now; a Ctrl-C that came while it was being launched reaches it now."""
        self.proc, self.passed_on = proc, 0
        self.pass_on()

    def pass_on(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        while self.passed_on < self.count:
            self.passed_on += 1
            print("\nqueue: stopping the current run (it saves first); the rest stays queued", file=sys.stderr,
                  flush=True)
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
            except (ProcessLookupError, PermissionError):
                pass


def _launch(store: RunStore, root: Path, row: dict, python: str) -> subprocess.Popen:
    """Start a claimed run's trainer (the caller holds the device lock); the studio sees it as its own."""
    folder = RunFolder(Path(row["folder"]))
    for stale in (folder.exit, folder.pid):
        stale.unlink(missing_ok=True)
    clear_requests(folder.root)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    with open(folder.log, "ab") as log:
        proc = subprocess.Popen([python, "-m", "trainer", "train", str(folder.config)], cwd=str(REPO_ROOT),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    atomic_write_text(folder.pid, str(proc.pid))
    hold(root, row["id"], folder.root, proc.pid)
    store.update(row["id"], state="running")
    return proc


def _finish(store: RunStore, row: dict, proc: subprocess.Popen, interrupt: _Interrupt) -> str:
    """Wait for the run's trainer; record its exit code in its folder and its end in the store."""
    interrupt.watch(proc)
    code = proc.wait()
    interrupt.proc = None
    folder = RunFolder(Path(row["folder"]))
    atomic_write_text(folder.exit, json.dumps({"code": code, "time": time.time()}))
    state = EXIT_STATES.get(code, "stopped" if interrupt.count and code < 0 else "failed")
    view = run_view(folder.root)
    store.update(row["id"], state=state, steps=view.step, adapter=view.adapter)
    print(f"queue: {row['id']} {state} (exit code {code})", flush=True)
    return state


def _run(a) -> int:
    store, root = _store(a.data_dir)
    interrupt = _Interrupt()
    previous = signal.signal(signal.SIGINT, interrupt)
    ran, failed, waiting = 0, 0, None
    try:
        while not interrupt.count:
            # the check, the claim and the launch are one step for every process on this data folder
            with device_lock(root):
                busy = active_run(root)
                if busy is None:
                    if interrupt.count:  # Ctrl-C came while waiting for the lock: start nothing more
                        break
                    store.release_stale_claims(lambda r: RunFolder(Path(r["folder"])).pid.exists())
                    row = store.claim_next()
                    if row is None:
                        break
                    proc = _launch(store, root, row, a.python)
            if busy is not None:  # a run the studio started holds the device: the queue waits for it
                if waiting != busy[0]:
                    print(f"queue: waiting for run {busy[0]} to end", flush=True)
                    waiting = busy[0]
                time.sleep(WAIT_S)
                continue
            print(f"queue: started {row['id']}", flush=True)
            state = _finish(store, row, proc, interrupt)
            ran += 1
            failed += state == "failed"  # a failed run does not stop the queue
    finally:
        signal.signal(signal.SIGINT, previous)
    left = len(store.queued())
    print(f"queue: {ran} run(s), {failed} failed; {left} still queued", flush=True)
    return 130 if interrupt.count else (1 if failed else 0)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer queue", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR),
                        help="the data folder whose queue to use (default: the studio's, so both see one queue)")
    sub = ap.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", parents=[common], help="queue a run (its settings are checked now)")
    add.add_argument("config", help="config.toml (full config) or a preset name/path with --preset")
    add.add_argument("--preset", action="store_true", help="treat CONFIG as a partial preset over the defaults")
    add.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override an option, e.g. --set network.rank=8 (repeatable)")
    add.add_argument("--run-dir", help="the run's folder (default: a new folder in the data folder's runs/)")
    add.add_argument("--name", help="the run's name in the list (default: saving.output_name)")
    lst = sub.add_parser("list", parents=[common], help="the queued runs in order, then the latest ended ones")
    lst.add_argument("--finished", type=int, default=10, help="how many ended runs to list (default 10)")
    run = sub.add_parser("run", parents=[common], help="run the queued runs one after another until the queue is empty")
    run.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    return {"add": _add, "list": _list, "run": _run}[a.command](a)
