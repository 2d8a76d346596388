"""The run folder's contract (trainer/run/folder.py, trainer/run/events.py): the reader tolerates a half-written
last line and reads incrementally from its offset; a control request is taken exactly once, so a repeated
one is seen twice; every event a real training writes carries the fields EVENTS documents for its type."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, events, make_dataset, run_in_process, run_trainer, write_config
from trainer.run.events import (EVENTS, ControlPoller, EventTail, EventWriter, RunView, clear_requests,
                                pending_requests, request)
from trainer.run.folder import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_STOPPED, RunFolder


def test_half_written_last_line_is_read_once_complete_and_offsets_advance(tmp_path):
    w = EventWriter(tmp_path)
    w.emit("warning", message="one")
    w.emit("step", step=1, max_steps=3, loss=0.5, lr=1e-3, batch="x", epoch=0, it_s=2.0, eta_s=1.0)
    path = RunFolder(tmp_path).events
    size_complete = path.stat().st_size
    half = json.dumps({"seq": 3, "type": "step", "step": 2, "max_steps": 3, "loss": 0.25})
    with open(path, "a") as f:
        f.write(half[:20])  # the writer is mid-append

    tail = EventTail(path)
    first = tail.poll()
    assert [e["type"] for e in first] == ["warning", "step"]
    assert tail.offset == size_complete  # stops before the partial line
    assert tail.poll() == []  # nothing new, nothing re-read

    view = RunView(tmp_path).update()
    assert (view.count, view.step, view.loss) == (2, 1, 0.5)
    with open(path, "a") as f:
        f.write(half[20:] + "\n")
    assert [e["step"] for e in tail.poll()] == [2]
    assert tail.offset == path.stat().st_size
    view.update()
    assert (view.count, view.step, view.losses) == (3, 2, [(1, 0.5), (2, 0.25)])

    # a new writer continues the numbering; a file replaced by a shorter one is read again from the start
    assert EventWriter(tmp_path).emit("warning", message="two")["seq"] == 4
    path.write_text(json.dumps({"seq": 1, "type": "finished", "status": "stopped", "step": 7}) + "\n")
    view.update()
    assert (view.count, view.state, view.step, view.losses) == (1, "stopped", 7, [])


def test_event_types_are_documented_and_enforced(tmp_path):
    w = EventWriter(tmp_path)
    with pytest.raises(ValueError, match="unknown event type"):
        w.emit("progress", step=1)
    with pytest.raises(ValueError, match="step event without"):
        w.emit("step", step=1)
    for name, spec in EVENTS.items():
        assert spec.doc and spec.required, name


def test_a_repeated_control_request_is_seen_twice_and_taken_once(tmp_path):
    run = tmp_path / "run"
    request(run, "stop")  # left by an earlier process: never taken by the next one
    w = EventWriter(run)
    poller = ControlPoller(run, w)
    assert poller.poll() == set()
    assert pending_requests(run) == []

    request(run, "sample_now")
    assert pending_requests(run) == ["sample_now"]
    assert poller.poll() == {"sample_now"}
    assert poller.poll() == set()  # taken once
    request(run, "sample_now")  # the same request again is a new request
    assert poller.poll() == {"sample_now"}
    request(run, "save_now")
    request(run, "stop")
    assert poller.poll() == {"save_now", "stop"}
    control = [json.loads(x) for x in RunFolder(run).events.read_text().splitlines()]
    assert [e["command"] for e in control if e["type"] == "control"] == ["sample_now", "sample_now", "save_now", "stop"]
    assert RunView(run).update().stop_taken
    with pytest.raises(ValueError, match="unknown control command"):
        request(run, "rm -rf")
    request(run, "stop")
    clear_requests(run)
    assert pending_requests(run) == [] and poller.poll() == set()


def _wait_for(run: Path, pred, proc, what: str, timeout: float = 600) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if RunFolder(run).events.exists():
            ev = events(run)
            if pred(ev):
                return ev
        assert proc.poll() is None, f"trainer exited ({proc.returncode}) before {what}: {(run / 'log.txt').read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout}s")


@pytest.mark.slow
def test_a_real_training_writes_every_documented_field(tmp_path):
    """A real tiny training through the CLI, steered through control/: two "sample now", one "save now", a
    stop; then a run that fails. Together they write every event type; each carries its documented fields."""
    data = make_dataset(tmp_path / "data", n=4)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # a warning: skipped image
    run = tmp_path / "run"
    write_config(run, **{"dataset.path": str(data), "schedule.max_train_steps": 100000, "sampling.every_n_steps": 0,
                         "sampling.at_start": "false", "dataset.cache_latents": "true",
                         "dataset.cache_on_first_use": "false",  # up front: the caching phase events
                         "validation.split": 0.25, "validation.timesteps": 1})
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with open(run / "log.txt", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "trainer", "train", str(run / "config.toml")], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_for(run, lambda ev: any(e["type"] == "step" for e in ev), proc, "step 1")
        for n in (1, 2):
            request(run, "sample_now")
            ev = _wait_for(run, lambda ev: sum(e["type"] == "sample" for e in ev) >= n, proc, f"preview {n}")
        request(run, "save_now")
        _wait_for(run, lambda ev: any(e["type"] == "checkpoint" for e in ev), proc, "a save")
        request(run, "stop")
        assert proc.wait(timeout=600) == EXIT_STOPPED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ev = events(run)
    samples = [e for e in ev if e["type"] == "sample"]
    assert len(samples) == 2 and samples[0]["step"] < samples[1]["step"]  # two presses, two previews
    assert [e["command"] for e in ev if e["type"] == "control"] == ["sample_now", "sample_now", "save_now", "stop"]
    assert {e["phase"] for e in ev if e["type"] == "phase"} >= {"loading model", "caching", "preview"}
    assert ev[-1]["type"] == "finished" and ev[-1]["status"] == "stopped"

    failed = tmp_path / "failed"
    write_config(failed, **{"dataset.path": str(tmp_path / "nowhere")})
    r = run_in_process("train", str(failed / "config.toml"))
    assert r.returncode == EXIT_FAILED, r.stderr
    ev += events(failed)

    seen = {e["type"] for e in ev}
    assert seen == set(EVENTS), f"not exercised: {set(EVENTS) - seen}"
    for e in ev:
        spec = EVENTS[e["type"]]
        for key in ("seq", "type", "time", "pid", *spec.required):
            assert key in e, (e["type"], key, e)
        assert set(e) <= {"seq", "type", "time", "pid", *spec.required, *spec.optional}, (e["type"], e)

    view = RunView(run).update()
    assert view.state == "stopped" and view.adapters() and view.adapter == view.adapters()[-1][1]


@pytest.mark.slow
def test_a_finished_run_trains_on_only_to_more_steps(tmp_path):
    data = make_dataset(tmp_path / "data", n=2)
    run = tmp_path / "run"
    cfg = write_config(run, **{"dataset.path": str(data), "schedule.max_train_steps": 3, "sampling.every_n_steps": 0,
                               "sampling.at_start": "false"})
    # killed after its last step's state, before its adapter: not finished, so a resume saves the adapter
    # the kill needs a process of its own; the resumes run here (same code)
    killed = run_trainer("train", str(cfg), env={"ATELIER_FAULT": "adapter@3"})
    assert killed.returncode < 0 and not (run / "output" / "tiny-test.safetensors").exists()
    assert run_in_process("train", str(cfg), "--resume").returncode == EXIT_OK
    first = (run / "output" / "tiny-test.safetensors").read_bytes()

    before = RunFolder(run).events.read_bytes()
    again = run_in_process("train", str(cfg), "--resume")  # nothing to train: refused, nothing written
    assert again.returncode == EXIT_CONFIG
    assert "already finished 3 steps" in again.stderr and "schedule.max_train_steps" in again.stderr
    assert RunFolder(run).events.read_bytes() == before  # still a finished run
    assert sorted(p.name for p in (run / "output").iterdir()) == ["tiny-test.safetensors"]

    more = run_in_process("train", str(cfg), "--resume", "--set", "schedule.max_train_steps=5")
    assert more.returncode == EXIT_OK, more.stderr[-2000:]
    ev = events(run)
    started = [e for e in ev if e["type"] == "started"][-1]
    assert started["resumed_from"] == 3 and started["max_steps"] == 5
    assert [e["step"] for e in ev if e["type"] == "step"][-2:] == [4, 5]
    assert (run / "output" / "tiny-test.safetensors").read_bytes() == first  # the earlier adapter is kept
    assert (run / "output" / "tiny-test-step000005.safetensors").is_file()
    view = RunView(run).update()
    assert view.state == "finished" and view.adapter == "output/tiny-test-step000005.safetensors"
    # the config actually used (with the --set) is what the run folder says it ran with
    assert "max_train_steps = 5" in RunFolder(run).effective_config.read_text()


def test_every_look_at_a_run_shares_one_view_that_reads_only_what_was_appended(tmp_path, monkeypatch):
    """The Train tab's timer, the runner's state, the adapter lookup and the bundle all call run_view():
    one fold per run folder, reading from the offset it reached (never the whole file again)."""
    from trainer.run import events as ev_mod
    from ui.runner import resolve_state

    w = EventWriter(tmp_path)
    for i in range(1, 51):
        w.emit("step", step=i, max_steps=100, loss=1.0 / i, lr=1e-3, batch="x", epoch=0, it_s=1.0, eta_s=9.0)
    read = []
    real_open = open

    def counting_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if str(path).endswith("events.jsonl") and "b" in mode:
            start = f.seek

            def seek(offset, *sa):
                read.append(offset)
                return start(offset, *sa)
            f.seek = seek
        return f

    view = ev_mod.run_view(tmp_path)
    assert view.step == 50 and view is ev_mod.run_view(tmp_path)
    monkeypatch.setattr("builtins.open", counting_open)
    size = RunFolder(tmp_path).events.stat().st_size
    resolve_state(tmp_path)
    assert read == []  # nothing new: the file is not even opened
    w.emit("step", step=51, max_steps=100, loss=0.1, lr=1e-3, batch="x", epoch=0, it_s=1.0, eta_s=9.0)
    assert resolve_state(tmp_path)["step"] == 51 and read == [size]  # read from where it stopped
    assert ev_mod.run_view(tmp_path).count == 51
