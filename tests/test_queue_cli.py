"""`python -m trainer queue`: two real tiny runs queued from the command line and run one after another,
each exit recorded in its run folder and in the run store the studio reads."""
from __future__ import annotations

import json

from tests.helpers import make_dataset, run_in_process, run_trainer, write_config
from trainer.run.store import RunStore


def test_queue_add_twice_then_run_trains_both_in_order(tmp_path):
    data = make_dataset(tmp_path / "images", n=2)
    cfg = write_config(tmp_path / "cfg", **{"dataset.path": str(data), "schedule.max_train_steps": 1,
                                            "sampling.prompts": [], "sampling.at_start": "false"})
    home = tmp_path / "data"
    first = run_in_process("queue", "add", str(cfg), "--data-dir", str(home), "--name", "first")
    second = run_in_process("queue", "add", str(cfg), "--data-dir", str(home), "--name", "second",
                            "--set", "schedule.max_train_steps=2", "--run-dir", str(tmp_path / "mine"))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    bad = run_in_process("queue", "add", str(cfg), "--data-dir", str(home), "--set", "network.rank=0")
    assert bad.returncode == 2 and "network.rank" in bad.stderr  # refused when queued, not at night
    listed = run_in_process("queue", "list", "--data-dir", str(home)).stdout
    lines = [line for line in listed.splitlines() if "queued" in line]
    assert len(lines) == 2 and "first" in lines[0] and str(tmp_path / "mine") in lines[1], listed

    r = run_trainer("queue", "run", "--data-dir", str(home))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 run(s), 0 failed; 0 still queued" in r.stdout
    store = RunStore(home / "runs.sqlite")
    rows = sorted(store.list(), key=lambda row: row["created"])
    assert [(row["name"], row["state"], row["steps"]) for row in rows] == [("first", "finished", 1),
                                                                         ("second", "finished", 2)]
    for row in rows:
        folder = tmp_path / "mine" if row["name"] == "second" else home / "runs" / row["id"]
        assert row["folder"] == str(folder)
        assert json.loads((folder / "exit.json").read_text())["code"] == 0
        assert (folder / "output" / "tiny-test.safetensors").is_file()
    started = [json.loads(line)["time"] for row in rows
               for line in (open(f"{row['folder']}/events.jsonl").readlines()[:1])]
    assert started[0] < started[1]
    # the studio on the same data folder lists the run in its runs/ as finished, and leaves the one queued
    # with its own --run-dir alone (it never reads a folder elsewhere as its run's)
    from ui import runs
    from ui.workspace import Studio

    assert [(s.name, s.state, s.step) for s in runs.summaries(Studio.create(home))] == [("first", "finished", 1)]
    assert store.get(rows[1]["id"])["state"] == "finished"
