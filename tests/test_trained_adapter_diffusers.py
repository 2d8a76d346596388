"""A trained adapter, written by the trainer in kohya format, loads into diffusers' load_lora_weights on
the same base and reproduces the trained peft model (UNet and text encoder) for SD1, SD2-v and SDXL."""
import pytest
import torch

from tests.helpers import make_dataset, write_config
from trainer.config import load_config
from trainer.train.loop import Trainer
from trainer.models.tiny import build_tiny
from tests.test_lora_math import _unet_out


def _te_out(base, prompt="a sks shape, number 1"):
    outs = []
    with torch.no_grad():
        for tok, te in zip(base.tokenizers, base.text_encoders):
            ids = tok([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
            outs.append(te(ids).last_hidden_state)
    return outs


@pytest.mark.parametrize("family", ["sd1", "sd2-v", "sdxl"])
def test_trained_adapter_loads_in_diffusers(tmp_path, family):
    data = make_dataset(tmp_path / "data", n=4)
    cfg = load_config(write_config(tmp_path / "run", **{
        "dataset.path": str(data), "model.base": f"tiny:{family}", "schedule.max_train_steps": 4,
        "sampling.prompts": [], "network.train_text_encoder": "true", "network.alpha": 2.0,
        "optimizer.lr": 1e-2, "optimizer.text_encoder_lr": 1e-2, "saving.precision": "fp32"}))
    tr = Trainer(cfg, tmp_path / "run", quiet=True)
    assert tr.run() == 0
    sdxl = family == "sdxl"
    for m in [tr.base.unet, *tr.base.text_encoders]:
        m.eval()
    want_unet = _unet_out(tr.base.unet, sdxl=sdxl)
    want_te = _te_out(tr.base)

    fresh = build_tiny(family)
    base_unet = _unet_out(fresh.unet, sdxl=sdxl)
    assert (want_unet - base_unet).abs().max() > 1e-4  # the adapter does something
    pipe = fresh.pipeline()
    pipe.load_lora_weights(str(tmp_path / "run" / "output" / "tiny-test.safetensors"))
    got_unet = _unet_out(pipe.unet, sdxl=sdxl)
    assert (got_unet - want_unet).abs().max() <= 1e-4
    for got, want in zip(_te_out(fresh), want_te):
        assert (got - want).abs().max() <= 1e-4
