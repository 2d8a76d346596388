"""A resumable state of a run with 8-bit AdamW: bitsandbytes keeps its quantisation state in a nested
dict of tensors, which the state folder must store and give back (it failed with "Tensor is not JSON
serializable" at the first save, so every adamw8bit run, the low-VRAM presets' optimizer, died there)."""
from __future__ import annotations

import pytest
import torch

from trainer.run.state import load_state, save_state


def test_adamw8bit_state_saves_and_restores(tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    p, r = torch.nn.Parameter(torch.randn(64, 64)), torch.nn.Parameter(torch.randn(64, 64))
    opt = bnb.optim.AdamW8bit([p, r], lr=1e-3)  # two parameters: bitsandbytes shares their quantisation map
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for _ in range(2):
        p.grad, r.grad = torch.randn(64, 64), torch.randn(64, 64)
        opt.step()
    before = opt.state_dict()
    assert any(isinstance(v, dict) for v in before["state"][0].values())  # the nested quantisation state
    state_dir = save_state(tmp_path, 2, {"w": p.detach()}, opt, sched, {"epoch": 0}, keep_last=2)
    _, opt_sd, *_ = load_state(state_dir)
    q, s = torch.nn.Parameter(p.detach().clone()), torch.nn.Parameter(r.detach().clone())
    opt2 = bnb.optim.AdamW8bit([q, s], lr=1e-3)
    opt2.load_state_dict(opt_sd)
    g, h = torch.randn(64, 64), torch.randn(64, 64)
    p.grad, q.grad, r.grad, s.grad = g.clone(), g.clone(), h.clone(), h.clone()
    opt.step(), opt2.step()
    assert torch.equal(p, q) and torch.equal(r, s)  # the restored optimizer continues exactly
