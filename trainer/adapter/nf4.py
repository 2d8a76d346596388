"""The 4-bit weight as bitsandbytes stores it: importing bitsandbytes (only when a 4-bit base is used)
and reading a Linear4bit's weight back as fp32. A leaf module: trainer.adapter.dora and
trainer.adapter.quantize both read 4-bit weights through it, without importing each other."""
from __future__ import annotations

import torch


class QuantizeError(RuntimeError):
    pass


def require_bnb():
    try:
        import bitsandbytes as bnb
    except Exception as e:  # ImportError, or a broken native library
        raise QuantizeError(f"network.quantize_base = 'nf4' needs bitsandbytes, which failed to import: {e}") from None
    return bnb


def dequantized_weight(layer) -> torch.Tensor:
    """The weight a Linear4bit actually multiplies by (fp32), whatever packing the CPU kernel chose."""
    bnb = require_bnb()
    w = layer.weight
    qs = w.quant_state
    data = w.data
    if getattr(qs, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        data, qs = _convert_weight_packed_for_cpu_inverse(data, qs)
    return bnb.functional.dequantize_4bit(data, qs).float()
