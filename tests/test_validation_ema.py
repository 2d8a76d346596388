"""Validation loss on held-out images and the EMA of the adapter weights, on the tiny model in-process.

One reference run (a held-out share, EMA at decay 0.5, saves at steps 2 and 4) serves most checks; a run
stopped and resumed must repeat its validation losses and EMA; two short runs (a validation folder with EMA
at decay 0; EMA at decay 1) must train exactly the same weights."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers import events, make_dataset, write_config
from trainer.config import ConfigError, load_config
from trainer.formats.metadata import EMA_KEY
from trainer.train.checkpoints import trainable_state
from trainer.train.loop import Trainer
from trainer.train.setup import load_data

STEPS = 4


def _cfg(tmp_path, name, data, **sets):
    return load_config(write_config(tmp_path / name, **{
        "dataset.path": str(data), "schedule.max_train_steps": STEPS, "sampling.prompts": [],
        "network.dropout": 0.2, "dataset.flip": "true", "optimizer.lr": 3e-2,
        "validation.timesteps": 2, **sets}))


HELD = {"validation.split": 0.2, "saving.every_n_steps": 2, "optimizer.ema": "true", "optimizer.ema_decay": 0.5}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("valdata") / "data", n=6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """The uninterrupted run: (trainer after the run, its run folder)."""
    tmp = tmp_path_factory.mktemp("valref")
    trainer = Trainer(_cfg(tmp, "ref", data, **HELD), tmp / "ref", quiet=True)
    assert trainer.run() == 0
    return trainer, tmp / "ref"


def _validations(run_dir) -> dict[int, dict]:
    return {e["step"]: e for e in events(run_dir) if e["type"] == "validation"}


def _load_weights(trainer, tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, p in trainable_state(trainer.base).items():
            p.copy_(tensors[k])


def test_held_out_images_are_never_trained_on(reference, data):
    trainer, _ = reference
    held = {it.rel for it in trainer.val_dataset.items}
    trained = {it.rel for it in trainer.dataset.items}
    assert len(held) == 1 and not held & trained and held | trained == {p.name for p in data.glob("*.png")}
    for epoch in range(trainer.progress.epoch + 2):  # every batch the run drew, and the next epoch's
        for batch in trainer.dataset.epoch_batches(epoch):
            assert not {trainer.dataset.items[trainer.dataset.item_index(i, epoch)].rel for i in batch} & held
    # the same images when read again: chosen by the validation seed alone (not the training seed)
    _, again = load_data(_cfg(data.parent, "other", data, **{**HELD, "schedule.seed": 7}), data.parent)
    assert {it.rel for it in again.items} == held


def test_validation_loss_is_deterministic_and_tells_checkpoints_apart(reference):
    trainer, run_dir = reference
    vals = _validations(run_dir)
    assert sorted(vals) == [0, 2, STEPS]
    assert len({vals[s]["loss"] for s in vals}) == 3  # the checkpoints differ on the same draw
    assert vals[2]["adapter"] == "output/tiny-test-step000002.safetensors" and vals[2]["state"].endswith("00002")
    assert vals[2]["timesteps"] == [250, 750] and vals[2]["images"] == 1
    record = json.loads((run_dir / vals[2]["state"] / "validation.json").read_text())
    assert record["loss"] == vals[2]["loss"]

    unet = trainer.base.unet
    unet.train()
    first, second = trainer.validation.measure()["loss"], trainer.validation.measure()["loss"]
    assert first == second  # bit for bit, dropout on in training mode notwithstanding
    assert unet.training  # its mode is put back
    assert round(first, 6) == vals[STEPS]["loss"]
    # the step-2 checkpoint, put back after training moved on, measures what it measured then
    _load_weights(trainer, load_file(str(run_dir / vals[2]["state"] / "adapter.safetensors")))
    assert round(trainer.validation.measure()["loss"], 6) == vals[2]["loss"]


def test_ema_is_saved_beside_each_adapter(reference):
    trainer, run_dir = reference
    ckpt = [e for e in events(run_dir) if e["type"] == "checkpoint"]
    assert [e["ema_adapter"] for e in ckpt] == ["output/tiny-test-step000002-ema.safetensors",
                                                "output/tiny-test-ema.safetensors"]
    raw, ema = (load_file(str(run_dir / "output" / f"tiny-test{s}.safetensors")) for s in ("", "-ema"))
    assert raw.keys() == ema.keys() and not all(torch.equal(raw[k], ema[k]) for k in raw)
    # the file is the state's average, in the save precision
    state = load_file(str(run_dir / "checkpoints" / f"step-{STEPS:08d}" / "ema.safetensors"))
    assert trainer.ema is not None and all(torch.equal(state[k], trainer.ema.averages[k]) for k in state)
    with safe_open(str(run_dir / "output" / "tiny-test-ema.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta[EMA_KEY]) == {"decay": 0.5, "start_step": 0}
    assert meta["modelspec.title"] == "tiny-test (EMA)" and meta["ss_network_dim"] == "4"
    vals = _validations(run_dir)
    assert "ema_loss" not in vals[0] and all(vals[s]["ema_loss"] != vals[s]["loss"] for s in (2, STEPS))


def test_resume_repeats_the_validation_draw(reference, tmp_path, data):
    _, ref_dir = reference
    part = Trainer(_cfg(tmp_path, "part", data, **HELD), tmp_path / "part", quiet=True)
    real_poll = part.control.poll
    part.control.poll = lambda: {"stop"} if part.progress.step == 0 else real_poll()  # stops after step 1
    assert part.run() == 3
    resumed = Trainer(_cfg(tmp_path, "part", data, **HELD), tmp_path / "part", resume=True, quiet=True)
    assert resumed.run() == 0
    got, want = _validations(tmp_path / "part"), _validations(ref_dir)
    assert sorted(got) == [0, 1, 2, STEPS]
    for step in (0, 2, STEPS):
        for key in ("loss", "ema_loss") if step else ("loss",):
            assert got[step][key] == pytest.approx(want[step][key], abs=2e-6), (step, key)
    # the EMA went on from the stopped state exactly as in the run that never stopped
    a, b = (load_file(str(d / "checkpoints" / f"step-{STEPS:08d}" / "ema.safetensors")) for d in (tmp_path / "part", ref_dir))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_validation_and_ema_leave_training_untouched(tmp_path, data):
    """A run with a validation folder and an EMA at decay 0, and one with an EMA frozen at the start
    (decay 1), train exactly the same weights: neither draws from the training's random streams. The
    decay-0 EMA is the trained weights, the decay-1 EMA the starting ones."""
    folder = make_dataset(tmp_path / "val", n=1, seed=5)
    short = {"schedule.max_train_steps": 2, "optimizer.ema": "true"}
    validated = Trainer(_cfg(tmp_path, "v", data, **short, **{"validation.path": str(folder),
                                                              "optimizer.ema_decay": 0.0}), tmp_path / "v", quiet=True)
    assert validated.run() == 0
    frozen = Trainer(_cfg(tmp_path, "e", data, **short, **{"optimizer.ema_decay": 1.0}), tmp_path / "e", quiet=True)
    start: dict[str, torch.Tensor] = {}
    set_up = frozen._set_up
    frozen._set_up = lambda: (set_up(), start.update({k: v.detach().clone() for k, v in
                                                      trainable_state(frozen.base).items()}))
    assert frozen.run() == 0
    a, b = trainable_state(validated.base), trainable_state(frozen.base)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], start[k]) for k in a)  # it did train
    raw, zero = (load_file(str(tmp_path / "v" / "checkpoints" / "step-00000002" / f))
                 for f in ("adapter.safetensors", "ema.safetensors"))
    assert all(torch.equal(raw[k], zero[k]) for k in raw)
    raw_file, ema_file = (load_file(str(tmp_path / "v" / "output" / f"tiny-test{s}.safetensors")) for s in ("", "-ema"))
    assert all(torch.equal(raw_file[k], ema_file[k]) for k in raw_file)
    one = load_file(str(tmp_path / "e" / "checkpoints" / "step-00000002" / "ema.safetensors"))
    assert all(torch.equal(one[k], start[k]) for k in start)
    vals = [e for e in events(tmp_path / "v") if e["type"] == "validation"]
    assert [v["images"] for v in vals] == [1, 1] and vals[-1]["ema_loss"] == vals[-1]["loss"]
    assert validated.dataset.num_images == 6


def test_validation_settings_are_checked(tmp_path, data):
    with pytest.raises(ConfigError, match="validation: set split .* or path"):
        _cfg(tmp_path, "both", data, **{"validation.split": 0.2, "validation.path": str(data)})
    with pytest.raises(ConfigError, match="validation.split"):
        _cfg(tmp_path, "big", data, **{"validation.split": 0.9})


def test_the_train_tab_plots_the_validation_loss(reference):
    from trainer.run.events import RunView
    from ui.live import loss_rows

    _, run_dir = reference
    view = RunView(run_dir).update()
    want = [(s, v["loss"]) for s, v in sorted(_validations(run_dir).items())]
    assert view.val_losses == want
    assert [(s, v) for s, v, curve in loss_rows(view) if curve == "validation"] == want
