"""The runner with real trainer processes: one training per device even when two starts race,
graceful stop → stopped, a config error → failed with the trainer's message, and the run store."""
import threading
import time

from PIL import Image

from trainer.config import load_preset, save_config
from ui import dataset_files as df
from ui.workspace import Studio
from ui.runner import RunnerBusy, resolve_state


def make_run(studio: Studio, name: str, steps: int, base: str | None = None) -> str:
    ds = studio.dirs.dataset_dir("set")
    if not ds.exists():
        (ds / "images").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (64, 64), (60 * i, 90, 200)).save(ds / "images" / f"{i}.png")
            (ds / "images" / f"{i}.txt").write_text("a photo of a sks cat")
    rid = studio.store.new_id(name)
    rd = studio.run_dir(rid)
    df.copy_dataset(ds, rd / "dataset")
    cfg = load_preset("tiny-test")
    cfg.dataset.path = str(rd / "dataset")
    cfg.schedule.max_train_steps = steps
    cfg.sampling.at_start = False
    cfg.sampling.every_n_steps = 0
    if base:
        cfg.model.base = base
    save_config(cfg, rd / "config.toml")
    studio.store.add(rid, name, cfg.model.base, "tiny-test", rd)
    return rid


def wait_state(studio, rid, states, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = studio.runner.refresh(rid)
        if info["state"] in states:
            return info
        time.sleep(0.5)
    raise AssertionError(f"{rid} did not reach {states}: {info}")


def test_two_racing_starts_get_one_training_and_stop_is_graceful(tmp_path):
    # two Studio objects on one data folder stand for two app processes (or sessions) pressing Train
    a, b = Studio.create(tmp_path / "data"), Studio.create(tmp_path / "data")
    r1, r2 = make_run(a, "one", 5000), make_run(a, "two", 5000)
    barrier, results = threading.Barrier(2), {}

    def go(studio, rid):
        barrier.wait()
        try:
            results[rid] = studio.runner.start(rid)
        except RunnerBusy as e:
            results[rid] = e

    ts = [threading.Thread(target=go, args=(a, r1)), threading.Thread(target=go, args=(b, r2))]
    [t.start() for t in ts]
    [t.join() for t in ts]
    refused = [r for r, v in results.items() if isinstance(v, RunnerBusy)]
    started = [r for r, v in results.items() if isinstance(v, int)]
    assert len(refused) == 1 and len(started) == 1, results
    assert "is training on this device" in str(results[refused[0]])
    winner = started[0]
    owner = a if winner == r1 else b
    assert a.runner.active() == winner and b.runner.active() == winner
    assert resolve_state(a.run_dir(refused[0]))["state"] == "created"

    deadline = time.monotonic() + 240
    while resolve_state(a.run_dir(winner))["step"] < 1:
        assert time.monotonic() < deadline, (a.run_dir(winner) / "trainer.log").read_text()
        time.sleep(0.5)
    msg = owner.runner.stop(winner, wait=True)
    assert msg.startswith("Stopping")
    info = wait_state(owner, winner, ("stopped", "failed", "finished"), timeout=60)
    assert info["state"] == "stopped", (info, (a.run_dir(winner) / "trainer.log").read_text()[-2000:])
    deadline = time.monotonic() + 30  # the watcher thread records the exit code once it has reaped the process
    while "exit_code" not in info and time.monotonic() < deadline:
        time.sleep(0.2)
        info = owner.runner.refresh(winner)
    assert info["state"] == "stopped" and info["exit_code"] == 3
    assert a.store.get(winner)["state"] == "stopped"
    assert a.runner.active() is None


def test_config_error_is_failed_with_the_trainers_message(tmp_path):
    studio = Studio.create(tmp_path / "data")
    rid = make_run(studio, "bad", 3)
    cfg_path = studio.run_dir(rid) / "config.toml"
    cfg_path.write_text(cfg_path.read_text().replace("rank = 4", "rank = 0"))
    studio.runner.start(rid)
    info = wait_state(studio, rid, ("failed", "finished", "stopped"), timeout=120)
    assert info["state"] == "failed" and info["exit_code"] == 2
    assert "network.rank" in info["error"]
    assert studio.store.get(rid)["state"] == "failed"
