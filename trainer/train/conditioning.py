"""Text conditioning the way each family's UNet expects it (clip skip, SDXL's two encoders and
added time ids)."""
from __future__ import annotations

import torch


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encode_text(base, captions: list[str], clip_skip: int = 1, device="cpu", encoders=None) -> dict[str, torch.Tensor]:
    """{"encoder_hidden_states": [B,77,D]} (+ "text_embeds" pooled for SDXL). `encoders` replaces
    base.text_encoders for the forward pass (e.g. DDP-wrapped ones)."""
    encoders = encoders or base.text_encoders
    if base.is_sdxl:
        hidden, pooled = [], None
        for i, (tok, te) in enumerate(zip(base.tokenizers, encoders)):
            out = te(tokenize(tok, captions).to(device), output_hidden_states=True)
            # SDXL conditions on the penultimate layer of both encoders (clip skip counts from there)
            hidden.append(out.hidden_states[-(clip_skip + 1)])
            if i == 1:
                pooled = out.text_embeds
        return {"encoder_hidden_states": torch.cat(hidden, dim=-1), "text_embeds": pooled}
    te = encoders[0]
    ids = tokenize(base.tokenizers[0], captions).to(device)
    if clip_skip <= 1:
        h = te(ids).last_hidden_state
    else:
        out = te(ids, output_hidden_states=True)
        h = out.hidden_states[-clip_skip]
        inner = getattr(te, "module", te)  # unwrap DDP
        final_ln = inner.text_model.final_layer_norm if hasattr(inner, "text_model") else inner.final_layer_norm
        h = final_ln(h)
    return {"encoder_hidden_states": h}
