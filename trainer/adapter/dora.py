"""DoRA's two norm axes, and how each client applies a `dora_scale` (docs/adapter-format.md, "DoRA").

Per input column (the default, axis "in"): W' = (W+ΔW) · m_col / ||W+ΔW||_col, saved as dora_scale
[1, in]. A1111/Forge always apply this form and ComfyUI detects it from the shape: both apply it exactly.
Per output row (axis "out", peft's use_dora, LyCORIS wd_on_out): W' = m_row · (W+ΔW) / ||W+ΔW||_row,
saved as [out, 1]; A1111 mis-applies it and ComfyUI divides by the norm of W instead of W+ΔW.

Both are trained here as peft LoRA variants (`ColumnDora`, `RowDora`). Column-wise DoRA is a
per-input-channel rescaling of the layer's input: (W+ΔW)·diag(d)·x = (W+ΔW)·(d⊙x) with
d = m / ||W+ΔW||_col, so the variant scales x and runs base + LoRA on it (for a conv, d scales the input
channels: zero padding commutes with that); row-wise DoRA scales the output channels. As in the DoRA
paper (§4.3), the norm is a constant in the backward pass, and it is computed from small products
(`dora_norm`), never by building W + ΔW.

The client rules below are transcribed from their sources (LyCORIS `apply_weight_decompose` with
wd_on_out, A1111 `NetworkModule.apply_weight_decompose`, ComfyUI `weight_adapter.base.weight_decompose`);
the tests recompute each client's merged weight with them and compare to the trained module.
"""
from __future__ import annotations

import torch
from peft.tuners.lora.layer import LoraVariant

AXES = ("out", "in")


def row_norm(w: torch.Tensor) -> torch.Tensor:
    """||w||₂ of each output row (over every other dim), shaped to broadcast against w: [out, 1, …]."""
    return torch.linalg.vector_norm(w, dim=tuple(range(1, w.dim())), keepdim=True)


def col_norm(w: torch.Tensor) -> torch.Tensor:
    """||w||₂ of each input column (over out and the kernel), shaped [1, in, 1, …]."""
    # squares summed along memory order (kernel, then rows): a norm over dim 0 strides across rows and
    # was 4x slower on SD1.5's 5120x1280 layers, as was the transposed copy it replaced
    w = w.float()
    sq = (w * w).reshape(w.shape[0], w.shape[1], -1).sum(2).sum(0)
    return sq.sqrt().reshape(1, w.shape[1], *[1] * (w.dim() - 2))


class _Magnitude(torch.nn.Module):
    """Holds m like peft's DoraLinearLayer does (`.weight`), so lora_magnitude_vector[adapter].weight works."""

    def __init__(self, m: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(m, requires_grad=True)

    def forward(self, *args, **kwargs):  # pragma: no cover - never called, the variant reads .weight
        raise RuntimeError("a DoRA magnitude is not a layer")


def base_weight(layer) -> torch.Tensor:
    """The frozen weight the layer multiplies by (dequantised for a 4-bit base), fp32."""
    from peft.utils.integrations import dequantize_module_weight

    base = layer.get_base_layer()
    if type(base.weight).__name__ == "Params4bit":
        from trainer.adapter.nf4 import dequantized_weight

        return dequantized_weight(base).reshape(base.out_features, base.in_features)
    return dequantize_module_weight(base).detach().float()


def lora_delta(layer, adapter: str) -> torch.Tensor:
    """scaling · B @ A in the base weight's shape (differentiable: used in the forward)."""
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    r = a.shape[0]
    base = layer.get_base_layer()
    # Params4bit stores packed codes; its logical shape is out × in
    shape = (base.out_features, base.in_features) if type(base.weight).__name__ == "Params4bit" else base.weight.shape
    return (b.reshape(b.shape[0], r) @ a.reshape(r, -1)).reshape(shape) * layer.scaling[adapter]


def _factors(layer, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A as [r, K], B as [out, r]) with K = in·kh·kw, fp32, detached."""
    a, b = layer.lora_A[adapter].weight.detach(), layer.lora_B[adapter].weight.detach()
    r = a.shape[0]
    return a.reshape(r, -1).float(), b.reshape(b.shape[0], r).float()


def _weight_2d(layer) -> torch.Tensor:
    """The frozen weight as [out, K], a view of it where possible (a 4-bit one is dequantised)."""
    base = layer.get_base_layer()
    if type(base.weight).__name__ == "Params4bit":
        return base_weight(layer)
    w = base.weight.detach()
    return w.reshape(w.shape[0], -1)


def _in_features(layer) -> int:
    base = layer.get_base_layer()
    return base.in_features if type(base.weight).__name__ == "Params4bit" else base.weight.shape[1]


@torch.no_grad()
def dora_norm(layer, adapter: str, axis: str) -> torch.Tensor:
    """||W + s·B·A|| per output row ("out", [out]) or per input column ("in", [in]), fp32, without
    building W + ΔW: ||W||² (cached, W is frozen) + 2s⟨W, B·A⟩ + s²||B·A||², where every product is
    [out, r] or [r, K]. Materialising W + ΔW in each forward (peft's use_dora) took SDXL DoRA from LoRA's
    15.5 GB to 23.4 GB (docs/adapter-format.md, "DoRA")."""
    w2 = _weight_2d(layer)
    a2, b2 = _factors(layer, adapter)
    s = float(layer.scaling[adapter])
    cache = layer.__dict__.setdefault("_atelier_wsq", {})
    if axis == "out":
        if axis not in cache:
            cache[axis] = torch.linalg.vector_norm(w2, dim=1, dtype=torch.float32).pow(2)
        cross = ((w2 @ a2.t().to(w2.dtype)).float() * b2).sum(1)
        lora_sq = ((b2 @ (a2 @ a2.t())) * b2).sum(1)
    else:
        n_in = _in_features(layer)
        r = a2.shape[0]
        if axis not in cache:
            cache[axis] = torch.linalg.vector_norm(w2.reshape(w2.shape[0], n_in, -1), dim=(0, 2),
                                                   dtype=torch.float32).pow(2)
        cross = ((b2.t().to(w2.dtype) @ w2).float() * a2).reshape(r, n_in, -1).sum((0, 2))
        lora_sq = (((b2.t() @ b2) @ a2) * a2).reshape(r, n_in, -1).sum((0, 2))
    wsq = cache[axis].to(cross.device)
    return (wsq + 2 * s * cross + s * s * lora_sq).clamp_min(0).sqrt()


class ColumnDora(LoraVariant):
    """DoRA with one magnitude per input column (the layout A1111 applies and ComfyUI detects).
    RowDora below is the per-output-row form (peft's, LyCORIS wd_on_out) on the same machinery."""
    AXIS = "in"

    @classmethod
    def init(cls, module, adapter_name: str, **kwargs) -> None:
        if "lora_magnitude_vector" not in module.adapter_layer_names:
            module.adapter_layer_names = module.adapter_layer_names[:] + ("lora_magnitude_vector",)
        m = dora_norm(module, adapter_name, cls.AXIS)
        dev = module.lora_A[adapter_name].weight.device
        module.lora_magnitude_vector[adapter_name] = _Magnitude(m.to(dev))

    @classmethod
    def factor(cls, module, adapter: str) -> torch.Tensor:
        """d = m / ||W+ΔW|| on the axis as a flat vector, the norm detached (DoRA paper §4.3)."""
        m = module.lora_magnitude_vector[adapter].weight
        return m / dora_norm(module, adapter, cls.AXIS).to(m.device)

    @classmethod
    def forward(cls, module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        d = cls.factor(module, active_adapter).to(x.dtype)
        xs = x * (d.view(1, -1, *[1] * (x.dim() - 2)) if x.dim() == 4 else d)
        out = module.get_base_layer()(xs)
        lora_A, lora_B = module.lora_A[active_adapter], module.lora_B[active_adapter]
        dropout = module.lora_dropout[active_adapter]
        return out + lora_B(lora_A(dropout(xs))) * module.scaling[active_adapter]

    @classmethod
    def merged(cls, module, adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        w = orig_weight.float() + lora_delta(module, adapter).detach().float()
        norm = col_norm(w) if cls.AXIS == "in" else row_norm(w)
        m = module.lora_magnitude_vector[adapter].weight.detach().float()
        return (w * (m.reshape(norm.shape) / norm)).to(orig_weight.dtype)

    @classmethod
    def merge_safe(cls, module, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return cls.merged(module, active_adapter, orig_weight)

    @classmethod
    def merge_unsafe(cls, module, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data = cls.merged(module, active_adapter, orig_weight.data)

    @staticmethod
    def unmerge(module, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("DoRA cannot be unmerged here (the pre-merge norms are not kept)")

    def supports_lora_conversion(self) -> bool:
        return False


class RowDora(ColumnDora):
    """DoRA with one magnitude per output row: W' = m·(W+ΔW)/||W+ΔW||_row, i.e. the layer's output scaled
    per channel, d ⊙ (W x + s·B A x) + bias. Same maths as peft's use_dora, without its per-forward copy
    of W + ΔW."""
    AXIS = "out"

    @classmethod
    def forward(cls, module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        d = cls.factor(module, active_adapter).to(result.dtype)
        d = d.view(1, -1, *[1] * (result.dim() - 2)) if result.dim() == 4 else d
        bias = module.get_base_layer().bias
        if bias is not None:
            bias = bias.to(result.dtype)
            bias = bias.view(1, -1, *[1] * (result.dim() - 2)) if result.dim() == 4 else bias
            result = result - bias
        lora_A, lora_B = module.lora_A[active_adapter], module.lora_B[active_adapter]
        dropout = module.lora_dropout[active_adapter]
        out = d * (result + lora_B(lora_A(dropout(x))) * module.scaling[active_adapter])
        return out + bias if bias is not None else out


VARIANTS = {"in": ColumnDora, "out": RowDora}


def attach_dora(model: torch.nn.Module, adapter: str, axis: str) -> int:
    """Turn every plain LoRA layer of `model` (peft Linear / Conv2d, bnb Linear4bit) into DoRA on `axis`."""
    from peft.tuners.lora.layer import LoraLayer

    if axis not in VARIANTS:
        raise ValueError(f"dora axis {axis!r}: expected one of {AXES}")
    n = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            if adapter in module.lora_variant:
                raise ValueError(f"{type(module).__name__} already has a LoRA variant; DoRA replaces none")
            module.lora_variant[adapter] = VARIANTS[axis]()
            VARIANTS[axis].init(module, adapter)
            n += 1
    return n


def attach_column_dora(model: torch.nn.Module, adapter: str) -> int:
    return attach_dora(model, adapter, "in")


def dora_axis(layer, adapter: str) -> str | None:
    """'out' (RowDora, or peft's own use_dora), 'in' (ColumnDora) or None (no DoRA on this layer)."""
    variant = getattr(layer, "lora_variant", {}).get(adapter)
    if isinstance(variant, ColumnDora):
        return variant.AXIS
    if getattr(layer, "use_dora", {}).get(adapter):
        return "out"
    return None


def dora_scale_tensor(layer, adapter: str) -> torch.Tensor | None:
    """The `dora_scale` to write for this layer: [out, 1(, 1, 1)] or [1, in(, 1, 1)]; None without DoRA."""
    axis = dora_axis(layer, adapter)
    if axis is None:
        return None
    mag = layer.lora_magnitude_vector[adapter].weight.detach()
    w = base_weight(layer)
    if axis == "out":
        return mag.reshape(w.shape[0], *[1] * (w.dim() - 1))
    return mag.reshape(1, w.shape[1], *[1] * (w.dim() - 2))


# ---------------------------------------------------------------- how the clients apply dora_scale

def merge_lycoris(w: torch.Tensor, delta: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """LyCORIS (and peft): the norm of the merged weight on the axis the scale's shape names."""
    merged = w + delta
    norm = row_norm(merged) if dora_scale.shape[0] == w.shape[0] and dora_scale.shape[0] != 1 else col_norm(merged)
    return merged * (dora_scale / norm)


def merge_a1111(w: torch.Tensor, delta: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """A1111/Forge: always per input column of W+ΔW; an [out, 1] scale broadcasts into nonsense."""
    merged = w + delta
    return merged * (dora_scale / col_norm(merged))


def merge_comfyui(w: torch.Tensor, delta: torch.Tensor, dora_scale: torch.Tensor,
                  eps: float | None = None) -> torch.Tensor:
    """ComfyUI: the axis from the shape (dora_scale.shape[0] == out → rows); on the row axis it takes the
    norm of the *base* weight W, not of W+ΔW; on the column axis the norm of W+ΔW."""
    eps = torch.finfo(w.dtype).eps if eps is None else eps
    merged = w + delta
    if dora_scale.shape[0] == merged.shape[0]:
        norm = row_norm(w)
    else:
        norm = col_norm(merged)
    return merged * (dora_scale / (norm + eps))


# what the compatibility report says, per axis: client → (applies it as trained?, why)
CLIENT_SUPPORT = {
    "out": {
        "lycoris": (True, "per-row norm of W+ΔW, as peft trains it"),
        "comfyui": (False, "rescales by the norm of the base W instead of W+ΔW: close only while ΔW is small"),
        "a1111": (False, "assumes per-input-column magnitudes; an [out,1] dora_scale is mis-applied"),
        "diffusers": (False, "ignores dora_scale: plain LoRA"),
        "sd-scripts": (False, "ignores dora_scale: plain LoRA"),
    },
    "in": {
        "a1111": (True, "per-input-column norm of W+ΔW, as trained (Forge the same)"),
        "comfyui": (True, "detects the column axis from the shape; norm of W+ΔW, as trained"),
        "lycoris": (True, "wd_on_out=False layout"),
        "diffusers": (False, "ignores dora_scale: plain LoRA"),
        "sd-scripts": (False, "ignores dora_scale: plain LoRA"),
    },
}


def compatibility(axis: str) -> dict[str, tuple[bool, str]]:
    if axis not in CLIENT_SUPPORT:
        raise ValueError(f"dora axis {axis!r}: expected one of {AXES}")
    return dict(CLIENT_SUPPORT[axis])


def kohya_delta(parts: dict[str, torch.Tensor], alpha: float | None, shape) -> torch.Tensor:
    """ΔW as the clients compute it from one module's tensors (suffix → tensor, without alpha): LoRA
    up@down·alpha/dim, LoHa (w1a@w1b)⊙(w2a@w2b)·alpha/dim, LoKr kron(w1, w2)·alpha/dim (scale 1 when
    both factors are full), in the base weight's `shape`, fp32. dora_scale is applied by the merge_* rules."""
    p = {k: v.float() for k, v in parts.items()}
    if "lora_down.weight" in p:
        down, up = p["lora_down.weight"], p["lora_up.weight"]
        dim = down.shape[0]
        delta = up.reshape(up.shape[0], dim) @ down.reshape(dim, -1)
    elif "hada_w1_a" in p:
        dim = p["hada_w1_b"].shape[0]
        delta = (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"])
    elif any(k.startswith("lokr_") for k in p):
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
        dim = p["lokr_w1_b"].shape[0] if "lokr_w1_b" in p else p["lokr_w2_b"].shape[0] if "lokr_w2_b" in p else None
        if len(shape) == 4 and w2.dim() == 2:
            w2 = w2.reshape(w2.shape[0], -1, *shape[2:]) if w2.numel() != w2.shape[0] * w2.shape[1] else w2
        delta = torch.kron(w1.reshape(w1.shape[0], w1.shape[1], *[1] * (w2.dim() - 2)), w2) if w2.dim() > 2 \
            else torch.kron(w1, w2)
        if dim is None:
            alpha = None  # both factors full: clients apply scale 1
    else:
        raise ValueError(f"no LoRA/LoHa/LoKr tensors in {sorted(parts)}")
    scale = alpha / dim if (alpha is not None and dim) else 1.0
    return (delta * scale).reshape(shape)
