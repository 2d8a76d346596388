"""The warm trainer (ui/warm.py, trainer/warm.py) with real processes: a run handed to it trains exactly as
a cold-started one (same adapter bit for bit, same events), in the warm process itself, seen as running
by the studio while it trains and stoppable like any other; runs that need bitsandbytes start cold; a warm
process the studio lets go exits."""
import time

import pytest
from safetensors.torch import load_file

from tests.helpers import run_in_process
from tests.test_ui_runner import make_run, wait_state
from trainer.config import load_config, save_config
from ui.runner import resolve_state
from ui.workspace import Studio


def _adapter(studio, rid):
    return load_file(str(next((studio.run_dir(rid) / "output").glob("*.safetensors"))))


def _warm_pid(studio, timeout=240):
    """The warm process's pid once it has imported everything and waits for a run."""
    deadline = time.monotonic() + timeout
    log = studio.dirs.root / "warm-trainer.log"
    while not (log.exists() and "warm: ready" in log.read_text()):
        assert studio.runner.warm._proc.poll() is None, log.read_text() if log.exists() else "no log"
        assert time.monotonic() < deadline, "the warm trainer never got ready"
        time.sleep(0.2)
    return studio.runner.warm._proc.pid


def test_a_run_handed_to_the_warm_trainer_trains_as_a_cold_one(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the trainer's threads, as run_in_process's: bit for bit
    studio = Studio.create(tmp_path / "data")
    rid = make_run(studio, "warm", 3)
    reference = tmp_path / "reference"  # the same run by the CLI's own code (run_in_process: bit for bit)
    r = run_in_process("train", str(studio.run_dir(rid) / "config.toml"), "--run-dir", str(reference), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]

    studio.runner.warm_up()
    pid = _warm_pid(studio)
    assert studio.runner.start(rid) == pid  # the waiting process became the run's trainer
    assert studio.runner.warm._proc is None  # and is no longer waiting
    info = wait_state(studio, rid, ("finished", "failed"))
    assert info["state"] == "finished", (studio.run_dir(rid) / "trainer.log").read_text()[-2000:]
    a = load_file(str(next((reference / "output").glob("*.safetensors"))))
    b = _adapter(studio, rid)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert "warm: ready" not in (studio.run_dir(rid) / "trainer.log").read_text()  # idle output stays apart
    deadline = time.monotonic() + 30
    while "exit_code" not in (info := resolve_state(studio.run_dir(rid))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert info["exit_code"] == 0


def test_a_run_handed_over_mid_import_is_running_at_once_and_stops_gracefully(tmp_path):
    # Train pressed seconds after the Train tab opened: the process is still importing torch and diffusers.
    # It takes the run at once (its output and first event go to the run) and trains when ready.
    studio = Studio.create(tmp_path / "data")
    rid = make_run(studio, "early", 100000)
    studio.runner.warm_up()
    pid = studio.runner.warm._proc.pid
    assert studio.runner.start(rid) == pid
    deadline = time.monotonic() + 240
    while (info := resolve_state(studio.run_dir(rid)))["step"] < 1:
        # never "failed without reporting" for a warm pid, before or after its imports end
        assert info["state"] == "running" and info["pid"] == pid, info
        assert time.monotonic() < deadline, (studio.run_dir(rid) / "trainer.log").read_text()
        time.sleep(0.2)
    studio.runner.stop(rid, wait=True)
    info = wait_state(studio, rid, ("stopped", "failed", "finished"), timeout=120)
    assert info["state"] == "stopped", (studio.run_dir(rid) / "trainer.log").read_text()[-2000:]
    assert "warm: ready" not in (studio.dirs.root / "warm-trainer.log").read_text()


@pytest.mark.parametrize("setting", ["network.quantize_base", "optimizer.name"])
def test_runs_that_need_bitsandbytes_start_cold(tmp_path, setting):
    studio = Studio.create(tmp_path / "data")
    rid = make_run(studio, "q", 1)
    config = studio.run_dir(rid) / "config.toml"
    cfg = load_config(config)
    if setting == "network.quantize_base":
        cfg.network.quantize_base = "nf4"
    else:
        cfg.optimizer.name = "adamw8bit"
    save_config(cfg, config)
    assert not studio.runner._warm_can_run(config, [])
    assert studio.runner._warm_can_run(config, [f"{setting}={'none' if 'quant' in setting else 'adamw'}"])


def test_the_warm_trainer_refuses_a_run_that_needs_bitsandbytes(tmp_path):
    # were one handed to it anyway, it says why instead of failing inside peft
    from trainer.cli import train_command
    from trainer.run.folder import EXIT_CONFIG

    studio = Studio.create(tmp_path / "data")
    rid = make_run(studio, "q", 1)
    config = studio.run_dir(rid) / "config.toml"
    assert train_command([str(config), "--set", "optimizer.name=adamw8bit"], bitsandbytes_hidden=True) == EXIT_CONFIG


def test_a_warm_trainer_let_go_exits(tmp_path):
    studio = Studio.create(tmp_path / "data")
    studio.runner.warm_up()
    proc = studio.runner.warm._proc
    studio.runner.warm.ensure()  # one is waiting: no second
    assert studio.runner.warm._proc is proc
    studio.runner.warm.close()
    assert proc.wait(timeout=120) == 0

