"""Every optimizer and schedule the schema offers builds and takes a step on adapter parameters."""
import pytest
import torch

from trainer.config import OptimizerSection, ScheduleSection
from trainer.train.optim import build_lr_scheduler, build_optimizer


@pytest.mark.parametrize("name", ["adamw", "adamw8bit", "prodigy", "lion", "adafactor"])
def test_optimizer_steps(name):
    torch.manual_seed(0)
    unet_p = [torch.nn.Parameter(torch.randn(8, 4))]
    te_p = [torch.nn.Parameter(torch.randn(4, 8))]
    opt = build_optimizer(OptimizerSection(name=name, lr=1e-2 if name != "prodigy" else 1.0,
                                           text_encoder_lr=5e-3), unet_p, te_p)
    assert [g["lr"] for g in opt.param_groups] == ([1e-2, 5e-3] if name != "prodigy" else [1.0, 1.0])
    before = [p.detach().clone() for p in unet_p + te_p]
    for _ in range(3):
        loss = (unet_p[0] @ te_p[0]).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(not torch.equal(b, p) for b, p in zip(before, unet_p + te_p))


def test_adamw_takes_one_call_over_all_tensors_with_the_numbers_of_the_per_tensor_loop():
    """AdamW runs foreach (torch's CPU default is a Python loop over the adapter's many small tensors): the
    weights after some steps are bit-identical to the loop's."""
    def train(make_opt) -> list[torch.Tensor]:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(8, 4 + i)) for i in range(6)]
        opt = make_opt(params)
        for step in range(4):
            for i, p in enumerate(params):
                p.grad = torch.sin(p.detach() * (step + i + 1))
            opt.step()
        return [p.detach() for p in params]

    ours = build_optimizer(OptimizerSection(lr=1e-2, weight_decay=0.01), [torch.nn.Parameter(torch.ones(1))], [])
    assert ours.defaults["foreach"] is True
    a = train(lambda ps: build_optimizer(OptimizerSection(lr=1e-2, weight_decay=0.01), ps, []))
    b = train(lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01, foreach=False))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine", "cosine_with_restarts"])
def test_schedules_warm_up_then_follow_their_shape(kind):
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer(OptimizerSection(lr=1.0), p, [])
    sched = build_lr_scheduler(ScheduleSection(scheduler=kind, max_train_steps=20, warmup_steps=4, num_cycles=2), opt)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[4] == pytest.approx(1.0)  # linear warmup to the set rate
    if kind == "constant":
        assert lrs[10] == pytest.approx(1.0)
    else:
        assert lrs[-1] < 0.5
