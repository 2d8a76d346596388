"""QLoRA's frozen base: the Linear layers of the UNet and text encoders held in 4-bit NF4 (bitsandbytes).

bitsandbytes ≥ 0.45 quantises and runs Linear4bit forward and backward on the CPU as well as on CUDA,
so the same path serves both. Convolutions stay in their own precision (bitsandbytes has no 4-bit conv);
the LoRA weights stay in fp32. peft wraps a Linear4bit in its bnb LoRA layer only when the model says
`is_loaded_in_4bit`, which `quantize_nf4` sets.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trainer.adapter.nf4 import QuantizeError, dequantized_weight, require_bnb  # noqa: F401 (re-exported)


@dataclass
class QuantReport:
    """Memory of the quantised Linear weights: as stored now, and what fp16 would take."""
    layers: int = 0
    params: int = 0
    bytes_nf4: int = 0  # packed 4-bit codes + per-block absmax (+ its own quantisation state)
    bytes_fp16: int = 0
    bytes_kept: int = 0  # weights left unquantised (convs, embeddings, norms, biases), in their dtype
    kept_linear: int = 0  # Linear layers of a shape the CPU 4-bit kernel cannot take, left in full precision
    originals: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # for LoftQ, then dropped

    @property
    def ratio(self) -> float:
        return self.bytes_nf4 / self.bytes_fp16 if self.bytes_fp16 else float("nan")

    def add(self, other: "QuantReport") -> None:
        self.layers += other.layers
        self.params += other.params
        self.bytes_nf4 += other.bytes_nf4
        self.bytes_fp16 += other.bytes_fp16
        self.bytes_kept += other.bytes_kept
        self.kept_linear += other.kept_linear

    def summary(self) -> str:
        mib = 2 ** 20
        return (f"{self.layers} Linear layers, {self.params:,} weights: NF4 {self.bytes_nf4 / mib:.3f} MiB vs fp16 "
                f"{self.bytes_fp16 / mib:.3f} MiB ({self.ratio:.3f}×); unquantised weights {self.bytes_kept / mib:.3f} MiB")


def quant_state_bytes(qs) -> int:
    n = 0
    for t in (getattr(qs, "absmax", None), getattr(qs, "code", None)):
        if isinstance(t, torch.Tensor):
            n += t.numel() * t.element_size()
    nested = getattr(qs, "state2", None)
    if nested is not None:
        n += quant_state_bytes(nested)
    return n


def linear4bit_bytes(layer) -> int:
    w = layer.weight
    return w.data.numel() * w.data.element_size() + quant_state_bytes(w.quant_state)


def fits_cpu_4bit_kernel(in_features: int, out_features: int) -> bool:
    """Whether bitsandbytes' CPU 4-bit path can hold a Linear of this shape. On CPUs with AVX512-BF16 it
    repacks the weight into tiles of 32 outputs and keeps one absmax per 64 inputs of a row, so other
    shapes crash there (`shape '[128, 0]' is invalid` for in_features < 64). Applied on every CPU, so
    that AVX2 and AVX512 machines quantise the same layers. Real SD models' Linear layers all fit."""
    return in_features % 64 == 0 and out_features % 32 == 0


def quantize_nf4(model: torch.nn.Module, device, compute_dtype: torch.dtype = torch.float32,
                 keep_originals: bool = False) -> QuantReport:
    """Replace every nn.Linear of `model` by a bnb Linear4bit (NF4, double-quantised statistics) in place.
    On a CPU, layers that `fits_cpu_4bit_kernel` refuses stay in full precision (counted in kept_linear)."""
    bnb = require_bnb()
    rep = QuantReport()
    linears = [(name, m) for name, m in model.named_modules() if type(m) is torch.nn.Linear]
    if not linears:
        raise QuantizeError(f"{type(model).__name__}: no Linear layer to quantise")
    on_cpu = torch.device(device).type == "cpu"
    targets = [(n, m) for n, m in linears if not on_cpu or fits_cpu_4bit_kernel(m.in_features, m.out_features)]
    rep.kept_linear = len(linears) - len(targets)
    for name, lin in targets:
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                              compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4")
        if keep_originals:
            rep.originals[name] = lin.weight.detach().float().cpu().clone()
        q.weight = bnb.nn.Params4bit(lin.weight.detach().float().cpu(), requires_grad=False,
                                     compress_statistics=True, quant_type="nf4", module=q)
        if lin.bias is not None:
            q.bias = torch.nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
        q = q.to(device)  # quantisation happens on this move
        q.requires_grad_(False)
        # on a CPU with AVX512-BF16, bitsandbytes repacks the weight in place at its first eval forward (a
        # preview) into a tiled layout of its own; there a trained QLoRA model and the same base + its saved
        # file then gave outputs 0.73 apart, and LoftQ's file moved the model away from the trained one
        # (tests/test_variants_train.py). Every CPU keeps the one layout that AVX2 machines use.
        q.support_avx512bf16_for_cpu = False
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, q)
        rep.layers += 1
        rep.params += lin.weight.numel()
        rep.bytes_nf4 += linear4bit_bytes(q)
        rep.bytes_fp16 += lin.weight.numel() * 2
    quantised = {id(m.weight) for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)}
    rep.bytes_kept = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in quantised)
    # peft dispatches its bnb LoRA layers on this flag (as transformers sets it for from_pretrained(load_in_4bit))
    model.is_loaded_in_4bit = True
    return rep


# ---------------------------------------------------------------- LoftQ

def _lora_layers_on_4bit(model: torch.nn.Module, adapter: str):
    bnb = require_bnb()
    from peft.tuners.lora.layer import LoraLayer

    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and adapter in layer.lora_A and \
                isinstance(layer.get_base_layer(), bnb.nn.Linear4bit):
            yield name, layer


LOFTQ_OVERSAMPLE = 8  # extra random directions of the randomised SVD (Halko et al.: 5-10 suffice)
LOFTQ_POWER_ITERATIONS = 4


@torch.no_grad()
def top_singular(m: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U [out, r], S [r], Vh [r, in]) of the r largest singular values of m. A randomised SVD with
    power iterations costs O(out·in·(r+8)) instead of a full SVD's O(out·in·min(out, in)); it falls back
    to the full one where r is not small against the matrix."""
    q = r + LOFTQ_OVERSAMPLE
    if q >= min(m.shape) // 2:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        return u[:, :r], s[:r], vh[:r]
    u, s, v = torch.svd_lowrank(m, q=q, niter=LOFTQ_POWER_ITERATIONS)
    return u[:, :r], s[:r], v[:, :r].t()


@torch.no_grad()
def loftq_initialise(models: list[torch.nn.Module], originals: dict[str, torch.Tensor], adapter: str) -> dict:
    """LoftQ (Li et al. 2023) for a base already in NF4: A and B become the best rank-r approximation
    of the quantisation error W − deq(Q(W)), so that deq(Q(W)) + scaling·B·A starts close to W.
    peft's own LoftQ paths (LoftQConfig, replace_lora_weights_loftq) run their SVD on CUDA only; this is
    the same one-shot form as replace_lora_weights_loftq, on the device the base is on. Only the top r
    singular triplets are needed, so a randomised SVD (`top_singular`) finds them: a full SVD of every
    Linear took 23.6 of a 26-minute SD1.5 run on 2 CPU cores.
    The starting factors are kept on the layer (`_atelier_loftq0`): an export must subtract them, since
    clients add the file to the full-precision W, not to the 4-bit one.
    Returns the relative Frobenius error of the quantised weights before and after."""
    from trainer.adapter.dora import col_norm, dora_axis, row_norm

    err_before = err_after = total = 0.0
    n = 0
    for model in models:
        for name, layer in _lora_layers_on_4bit(model, adapter):
            w = originals.get(f"{id(model)}:{name}")
            if w is None:
                raise QuantizeError(f"LoftQ: no full-precision weight kept for {name}")
            a_mod, b_mod = layer.lora_A[adapter], layer.lora_B[adapter]
            dev = a_mod.weight.device
            wq = dequantized_weight(layer.get_base_layer()).to(dev)
            w = w.to(dev)
            residual = w - wq
            r = layer.r[adapter]
            u, s, vh = top_singular(residual, r)
            root = s.sqrt()
            a = root[:, None] * vh
            b = u * root[None, :] / layer.scaling[adapter]
            a_mod.weight.data = a.to(a_mod.weight.dtype).contiguous()
            b_mod.weight.data = b.to(b_mod.weight.dtype).contiguous()
            layer._atelier_loftq0 = (a_mod.weight.detach().clone(), b_mod.weight.detach().clone())
            start = wq + layer.scaling[adapter] * (b_mod.weight.float() @ a_mod.weight.float())
            axis = dora_axis(layer, adapter)
            if axis is not None:  # DoRA's magnitude must describe the new starting weight
                norm = row_norm(start) if axis == "out" else col_norm(start)
                mag = layer.lora_magnitude_vector[adapter].weight
                mag.data = norm.reshape(mag.shape).to(mag.dtype)
            err_before += residual.pow(2).sum().item()
            err_after += (w - start).pow(2).sum().item()
            total += w.pow(2).sum().item()
            n += 1
    if n == 0:
        raise QuantizeError("LoftQ: no LoRA layer sits on a 4-bit Linear (is network.quantize_base = 'nf4'?)")
    return {"layers": n, "before": (err_before / total) ** 0.5, "after": (err_after / total) ** 0.5}


def loftq_export_factors(layer, adapter: str, down: torch.Tensor, up: torch.Tensor):
    """(down, up) that clients should apply for a LoftQ-initialised layer: the change training made,
    scaling·(B·A − B₀·A₀), written exactly as a rank-2r LoRA: down [A; A − A₀], up [B − B₀, B₀], since
    (B − B₀)·A + B₀·(A − A₀) = B·A − B₀·A₀. Each product is already a small change, so fp16 rounds the change
    itself rather than two large terms that cancel (as [A; A₀], [B, −B₀] would). Other layers unchanged."""
    start = getattr(layer, "_atelier_loftq0", None)
    if start is None:
        return down, up
    a0, b0 = start
    a0 = a0.reshape(a0.shape[0], *down.shape[1:]).to(down)
    b0 = b0.reshape(b0.shape[0], b0.shape[1], *up.shape[2:]).to(up)
    return torch.cat([down, down - a0], dim=0), torch.cat([up - b0, b0], dim=1)
