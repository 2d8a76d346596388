"""The queue of runs: order, reorder, remove, edit, a claim taken once by two processes' connections, the
queue surviving a reopen, and the studio's worker going on after a failed run. Real SQLite, real
subprocesses; the trainer is a small stand-in script where the run itself is not the point."""
from __future__ import annotations

import json
import sys
import threading
import time

import pytest
from PIL import Image

from trainer.config import load_preset
from trainer.run.store import QueueRefused, RunStore
from ui import runs
from ui.workspace import Studio

FAKE_TRAINER = """#!{python}
# stands in for `python -m trainer train CONFIG`: a run whose name has "fail" fails, the others finish
import json, os, sys, time
from pathlib import Path
run = Path(next(a for a in sys.argv[1:] if a.endswith(".toml"))).parent  # options may follow it
def emit(**ev):
    with open(run / "events.jsonl", "a") as f:
        f.write(json.dumps({{"pid": os.getpid(), "time": time.time(), **ev}}) + "\\n")
emit(type="started", max_steps=1)
if "fail" in run.name:
    emit(type="error", message="fake failure")
    emit(type="finished", status="failed", step=0)
    sys.exit(1)
emit(type="step", step=1, loss=0.5)
emit(type="finished", status="finished", step=1, adapter="output/x.safetensors")
"""


def _row(store: RunStore, name: str, tmp_path, queued=True) -> str:
    rid = store.new_id(name)
    store.add(rid, name, "tiny:sd1", "tiny-test", tmp_path / rid, queued=queued)
    return rid


def test_order_reorder_remove_and_a_reopened_store_keeps_the_queue(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    a, b, c = (_row(store, n, tmp_path) for n in "abc")
    _row(store, "plain", tmp_path, queued=False)  # a run made by Train is no part of the queue
    assert [r["id"] for r in store.queued()] == [a, b, c]
    store.move(c, -1)
    assert [r["id"] for r in store.queued()] == [a, c, b]
    with pytest.raises(QueueRefused, match="already first"):
        store.move(a, -1)
    with pytest.raises(QueueRefused, match="already last"):
        store.move(b, +1)
    with store.while_queued(a) as db:
        db.execute("DELETE FROM runs WHERE id = ?", (a,))
    reopened = RunStore(tmp_path / "runs.sqlite")  # another process, or the studio after a restart
    assert [r["id"] for r in reopened.queued()] == [c, b]
    assert reopened.claim_next()["id"] == c
    with pytest.raises(QueueRefused, match="not queued"):
        with reopened.while_queued(c):
            pass
    with pytest.raises(QueueRefused, match="not queued"):
        reopened.move(c, 1)
    reopened.unclaim(c)  # a claim that did not start goes back to its place, first
    assert [r["id"] for r in store.queued()] == [c, b]


def test_two_connections_racing_claim_each_run_once(tmp_path):
    first = RunStore(tmp_path / "runs.sqlite")
    ids = [_row(first, f"r{i}", tmp_path) for i in range(12)]
    stores = [first, RunStore(tmp_path / "runs.sqlite")]
    barrier, got = threading.Barrier(4), []

    def claim(store):
        barrier.wait()
        while (row := store.claim_next()) is not None:
            got.append(row["id"])

    threads = [threading.Thread(target=claim, args=(stores[i % 2],)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(got) == sorted(ids) and len(got) == len(set(got)) == 12
    assert first.queued() == []


@pytest.fixture
def studio(tmp_path):
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_TRAINER.format(python=sys.executable))
    fake.chmod(0o755)
    st = Studio.create(tmp_path / "data", python=str(fake))
    ds = st.dirs.dataset_dir("cats")
    ds.mkdir(parents=True)
    Image.new("RGB", (32, 32), (80, 20, 200)).save(ds / "0.png")
    return st


def _wait_ended(studio, ids, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        states = {s.id: s.state for s in runs.summaries(studio)}
        if all(states.get(i) in ("finished", "failed", "stopped") for i in ids):
            return states
        assert time.monotonic() < deadline, states
        time.sleep(0.2)


def test_the_worker_runs_the_queue_in_order_past_a_failed_run(studio):
    cfg = load_preset("tiny-test")
    ids = [runs.add_to_queue(studio, cfg, n, "cats") for n in ("one", "two-fail", "three", "four")]
    # a queued run is a run folder like Train makes: its config and a snapshot of the dataset
    folder = studio.run_dir(ids[0])
    assert (folder / "config.toml").is_file() and (folder / "dataset" / "0.png").is_file()
    assert [s.state for s in runs.summaries(studio)] == ["queued"] * 4  # a summary never calls it "created"
    cfg.network.rank = 8
    assert runs.edit_queued(studio, ids[2], cfg).startswith("Saved")
    assert "rank = 8" in (studio.run_dir(ids[2]) / "config.toml").read_text()
    assert str(studio.run_dir(ids[2]) / "dataset") in (studio.run_dir(ids[2]) / "config.toml").read_text()
    runs.move_queued(studio, ids[2], -1)
    assert runs.remove_queued(studio, ids[3]).startswith("Removed")
    assert not studio.run_dir(ids[3]).exists() and studio.store.get(ids[3]) is None

    worker = runs.QueueWorker(studio, interval=0.2).start()
    try:
        states = _wait_ended(studio, ids[:3])
    finally:
        worker.stop()
    assert (states[ids[0]], states[ids[1]], states[ids[2]]) == ("finished", "failed", "finished")
    started = {i: json.loads((studio.run_dir(i) / "events.jsonl").read_text().splitlines()[0])["time"]
               for i in ids[:3]}
    assert started[ids[0]] < started[ids[2]] < started[ids[1]]  # "three" was moved above "two-fail"
    with pytest.raises(runs.RunRefused, match="not queued"):
        runs.edit_queued(studio, ids[0], cfg)
    with pytest.raises(runs.RunRefused, match="not queued"):
        runs.remove_queued(studio, ids[0])


def test_a_restarted_studio_continues_the_queue_and_frees_a_dead_claim(studio, tmp_path):
    cfg = load_preset("tiny-test")
    a, b = (runs.add_to_queue(studio, cfg, n, "cats") for n in ("a", "b"))
    assert studio.store.claim_next()["id"] == a  # a studio claimed it and died before starting it
    again = Studio.create(studio.dirs.root, python=studio.python)
    assert runs.queue_step(again) == a  # the dead claim went back to its place and starts first
    _wait_ended(again, [a])
    assert runs.queue_step(again) == b
    _wait_ended(again, [b])
    assert runs.queue_step(again) is None
    assert {s.state for s in runs.summaries(again)} == {"finished"}


def test_the_studio_waits_while_the_command_line_queue_holds_the_device(studio, tmp_path):
    """`trainer queue run` names its run in active.json like the studio does (its folder may be anywhere):
    the studio's queue starts nothing until that process has ended."""
    import subprocess

    from trainer.run.device import device_lock, hold

    elsewhere = tmp_path / "cli-run"
    elsewhere.mkdir()
    held = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(elsewhere)])
    try:
        with device_lock(studio.dirs.root):
            hold(studio.dirs.root, "cli-run", elsewhere, held.pid)
        rid = runs.add_to_queue(studio, load_preset("tiny-test"), "waits", "cats")
        assert studio.runner.active() == "cli-run"
        assert runs.queue_step(studio) is None and studio.store.get(rid)["state"] == "queued"
    finally:
        held.kill()
        held.wait()
    assert runs.queue_step(studio) == rid
    _wait_ended(studio, [rid])


SIGINT_TRAINER = """#!{python}
# stands in for `python -m trainer train CONFIG`: trains until SIGINT, then saves and exits as stopped (3)
import json, os, signal, sys, time
from pathlib import Path
run = Path(next(a for a in sys.argv[1:] if a.endswith(".toml"))).parent  # options may follow it
stop = []
signal.signal(signal.SIGINT, lambda *a: stop.append(1))
def emit(**ev):
    with open(run / "events.jsonl", "a") as f:
        f.write(json.dumps({{"pid": os.getpid(), "time": time.time(), **ev}}) + "\\n")
emit(type="started", max_steps=1000)
while not stop:
    time.sleep(0.1)
emit(type="finished", status="stopped", step=1)
sys.exit(3)
"""


def test_ctrl_c_stops_the_current_run_gracefully_and_leaves_the_rest_queued(tmp_path):
    import os
    import signal
    import subprocess

    from tests.helpers import REPO, write_config

    fake = tmp_path / "fake-python"
    fake.write_text(SIGINT_TRAINER.format(python=sys.executable))
    fake.chmod(0o755)
    home = tmp_path / "data"
    cfg = write_config(tmp_path / "cfg")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for name in ("now", "later"):
        add = subprocess.run([sys.executable, "-m", "trainer", "queue", "add", str(cfg), "--name", name,
                              "--data-dir", str(home)], cwd=REPO, env=env, capture_output=True, text=True)
        assert add.returncode == 0, add.stderr
    store = RunStore(home / "runs.sqlite")
    now, later = (r["id"] for r in store.queued())
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "queue", "run", "--data-dir", str(home),
                             "--python", str(fake)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (home / "runs" / now / "events.jsonl").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # Ctrl-C (a terminal sends it to the queue's process group)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert json.loads((home / "runs" / now / "exit.json").read_text())["code"] == 3
    assert store.get(now)["state"] == "stopped"
    assert [r["id"] for r in store.queued()] == [later], out
    assert "1 still queued" in out


def test_a_ctrl_c_during_a_runs_launch_reaches_that_run():
    """The queue learns its run's process only once it is launched (pid file, device hold, the store); a
    Ctrl-C in that window was counted but never passed on, so the queue waited for a run that never stopped
    (a fresh-clone run hit it on a fast machine: the trainer wrote its first event before the queue watched it)."""
    import signal
    import subprocess

    from trainer.run.queue import _Interrupt

    child = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                              "signal.signal(signal.SIGINT, lambda *a: sys.exit(3))\n"
                              "print('ready', flush=True)\ntime.sleep(120)"],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        interrupt = _Interrupt()
        interrupt(signal.SIGINT, None)  # Ctrl-C before the queue watches the run
        interrupt.watch(child)
        assert child.wait(timeout=60) == 3
        assert interrupt.passed_on == 1
    finally:
        child.kill()
