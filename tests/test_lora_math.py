"""The contract: W' = W + (alpha/r)·B·A, B starts at zero, merging costs nothing."""
import copy

import torch

from tests.helpers import make_dataset, write_config
from trainer.config import load_config
from trainer.train.loop import Trainer
from trainer.models.tiny import build_tiny
from trainer.adapter.network import adapted_modules, build_network
from trainer.config import NetworkSection


def _unet_out(unet, seed=0, sdxl=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([10, 500])
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    kw = {}
    if sdxl:
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 32, generator=g),
                                   "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64]] * 2, dtype=torch.float32)}
    with torch.no_grad():
        return unet(x, t, ctx, **kw).sample


def test_step0_equals_base_exactly_for_each_family():
    for family in ("sd1", "sd2-v", "sdxl"):
        base = build_tiny(family)
        before = _unet_out(base.unet, sdxl=family == "sdxl")
        build_network(base, NetworkSection(rank=4, alpha=2, train_text_encoder=True, conv=True))
        after = _unet_out(base.unet, sdxl=family == "sdxl")
        assert torch.equal(before, after), family
        for m in adapted_modules(base.unet).values():
            assert torch.count_nonzero(m.lora_B["default"].weight) == 0


def _merged_copy(unet_adapted, pristine):
    """A plain UNet with (alpha/r)·B·A added into W by hand."""
    merged = copy.deepcopy(pristine)
    mods = dict(merged.named_modules())
    for name, m in adapted_modules(unet_adapted).items():
        a = m.lora_A["default"].weight.detach()
        b = m.lora_B["default"].weight.detach()
        scale = m.scaling["default"]
        target = mods[name]
        if a.ndim == 4:  # 1×1 conv: down [r,in,1,1], up [out,r,1,1]
            delta = (b.flatten(1) @ a.flatten(1)).reshape(target.weight.shape)
        else:
            delta = b @ a
        target.weight.data += scale * delta
    return merged


def test_trained_adapter_merges_into_weights_exactly(tmp_path):
    data = make_dataset(tmp_path / "data", n=4)
    cfg = load_config(write_config(tmp_path / "run", **{"dataset.path": str(data), "schedule.max_train_steps": 5,
                                                       "sampling.prompts": [], "network.alpha": 2.0,
                                                       "optimizer.lr": 1e-2}))
    pristine = build_tiny("sd1").unet
    tr = Trainer(cfg, tmp_path / "run", quiet=True)
    assert tr.run() == 0
    unet = tr.base.unet
    assert any(torch.count_nonzero(m.lora_B["default"].weight) for m in adapted_modules(unet).values())
    for m in adapted_modules(unet).values():
        assert m.scaling["default"] == 2.0 / 4
    adapted = _unet_out(unet)
    merged = _unet_out(_merged_copy(unet, pristine))
    base_out = _unet_out(pristine)
    assert (adapted - base_out).abs().max() > 1e-4  # training changed something
    assert (adapted - merged).abs().max() <= 1e-5
