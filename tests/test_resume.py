"""A run stopped at step k and resumed ends with the same adapter as one that never stopped."""

from tests.helpers import make_dataset, write_config
from trainer.config import load_config
from trainer.train.checkpoints import trainable_state
from trainer.train.loop import Trainer


def _cfg(tmp_path, name, data):
    return load_config(write_config(tmp_path / name, **{
        "dataset.path": str(data), "schedule.max_train_steps": 8, "sampling.prompts": [],
        "schedule.scheduler": "cosine", "schedule.warmup_steps": 2, "network.dropout": 0.1,
        "dataset.shuffle_caption": "true", "dataset.caption_dropout": 0.2, "dataset.flip": "true",
        "dataset.batch_size": 2, "noise.noise_offset": 0.05}))


def test_stop_and_resume_matches_uninterrupted(tmp_path):
    data = make_dataset(tmp_path / "data", n=6)
    full = Trainer(_cfg(tmp_path, "full", data), tmp_path / "full", quiet=True)
    assert full.run() == 0
    ref = {k: v.detach().clone() for k, v in trainable_state(full.base).items()}

    part = Trainer(_cfg(tmp_path, "part", data), tmp_path / "part", quiet=True)
    real_poll = part.control.poll
    part.control.poll = lambda: {"stop"} if part.progress.step == 3 else real_poll()
    assert part.run() == 3  # stopped gracefully, state saved
    resumed = Trainer(_cfg(tmp_path, "part", data), tmp_path / "part", resume=True, quiet=True)
    assert resumed.run() == 0
    assert resumed.progress.step == 8
    got = trainable_state(resumed.base)
    assert ref.keys() == got.keys()
    diff = max((ref[k] - got[k]).abs().max().item() for k in ref)
    assert diff <= 1e-6, diff
