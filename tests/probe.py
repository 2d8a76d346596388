"""Fixed-input forward passes of a base (UNet and text encoders), to compare two ways of applying an
adapter: the saved model vs the file loaded back, base + adapter vs a merged checkpoint."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def unpacked_4bit(*models):
    """bitsandbytes repacks a Linear4bit for its AVX512-BF16 CPU kernel on the first forward in eval mode
    without grad (absmax rounded to bf16), so the same 4-bit model gives different numbers on AVX2 and
    AVX512 CPUs. In training mode it never repacks; a Linear4bit has no dropout, so its training flag
    changes nothing else. The probes run 4-bit layers that way: one number on every x86 CPU."""
    flipped = [m for model in models for m in model.modules() if type(m).__name__ == "Linear4bit" and not m.training]
    for m in flipped:
        m.training = True
    try:
        yield
    finally:
        for m in flipped:
            m.training = False


@torch.no_grad()
def text_states(base, prompt: str = "a photo of a zkq cat") -> list[torch.Tensor]:
    """Penultimate hidden states of every text encoder (what SDXL conditions on; every adapted layer
    but the last feeds it) and the last one, concatenated."""
    out = []
    with unpacked_4bit(*base.text_encoders):
        for tok, te in zip(base.tokenizers, base.text_encoders):
            ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(te.device)
            res = te(ids, output_hidden_states=True)
            out.append(torch.cat([res.hidden_states[-2], res.hidden_states[-1]], dim=-1).float().cpu())
    return out


@torch.no_grad()
def unet_output(base, seed: int = 0, size: int = 16, timestep: int = 500,
                prompt: str = "a photo of a zkq cat") -> torch.Tensor:
    """One UNet prediction on seeded latents, conditioned on `prompt` through the base's own text
    encoders (so text-encoder adapters show up here too)."""
    with unpacked_4bit(base.unet, *base.text_encoders):
        unet = base.unet
        dev, dtype = unet.device, unet.dtype
        hidden, pooled = [], None
        for tok, te in zip(base.tokenizers, base.text_encoders):
            ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(te.device)
            res = te(ids, output_hidden_states=True)
            hidden.append(res.hidden_states[-2] if base.is_sdxl else res.last_hidden_state)
            pooled = getattr(res, "text_embeds", None)
        ctx = torch.cat(hidden, dim=-1).to(dev, dtype)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, unet.config.in_channels, size, size, generator=g).to(dev, dtype)
        kw = {}
        if base.is_sdxl:
            px = size * 8
            time_ids = torch.tensor([[px, px, 0, 0, px, px]], dtype=dtype, device=dev)
            kw["added_cond_kwargs"] = {"text_embeds": pooled.to(dev, dtype), "time_ids": time_ids}
        return unet(x, timestep, encoder_hidden_states=ctx, **kw).sample.float().cpu()
