"""An exponential moving average (EMA) of the adapter weights.

After each optimizer step from `start_step` on, every average moves towards its weight:
avg ← decay·avg + (1 − decay)·weight. Before `start_step` the average follows the weights, so it starts
from the weights of that step (decay 0: the raw weights; decay 1: frozen at the start). The averages are
fp32, on the weights' device or in CPU memory (`on_cpu`: each update copies the weights over). They are
saved in each resumable state (so a resume continues them exactly) and exported beside each adapter by
putting them into the network for the export (`swapped_in`), then the trained weights back.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


class EMA:
    def __init__(self, params: dict[str, torch.Tensor], decay: float, start_step: int, on_cpu: bool):
        self.params, self.decay, self.start_step, self.on_cpu = params, float(decay), int(start_step), on_cpu
        self.names = list(params)
        self.averages = {k: self._copy(p) for k, p in params.items()}

    def _copy(self, p: torch.Tensor) -> torch.Tensor:
        t = p.detach().float()
        return (t.to("cpu") if self.on_cpu else t).clone()

    def active(self, step: int) -> bool:
        """Whether the average differs from the weights after `step` (it has started averaging)."""
        return step > self.start_step

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step `step` (counted from 1)."""
        avgs = [self.averages[k] for k in self.names]
        weights = [self.params[k].detach().float() for k in self.names]
        if self.on_cpu:
            weights = [w.to("cpu") for w in weights]
        if step <= self.start_step:  # not started: follow the weights, so it starts from them
            torch._foreach_copy_(avgs, weights)
        elif self.decay < 1.0:
            torch._foreach_lerp_(avgs, weights, 1.0 - self.decay)

    def state(self) -> dict[str, torch.Tensor]:
        return self.averages

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = set(self.names) - set(tensors)
        if missing:
            raise ValueError(f"the saved EMA does not match this network ({len(missing)} tensors missing, "
                             f"e.g. {sorted(missing)[0]})")
        for k in self.names:
            self.averages[k].copy_(tensors[k])

    def describe(self) -> dict:
        return {"decay": self.decay, "start_step": self.start_step}

    @contextmanager
    def swapped_in(self):
        """The averages in place of the trained weights for the duration (an export, a validation); the
        trained weights back afterwards, whatever happens."""
        kept = {k: p.detach().clone() for k, p in self.params.items()}
        try:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(self.averages[k].to(p.device, p.dtype))
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(kept[k])
