"""`python -m trainer resize FILE --out NEW (--rank N | --energy F) [--dtype fp16|bf16|fp32] [--json]`:
change a LoRA's rank by SVD of each module's ΔW = scale·up·down.

--rank N keeps the N largest singular values per module (never more than the module has, so a rank
at or above the current one changes nothing); --energy F keeps, per module, the fewest that hold a
fraction F of the squared singular values (Frobenius energy). The report gives the kept energy and
the relative weight error ‖ΔW − ΔW_k‖/‖ΔW‖ per module and overall. Each module keeps its scale:
alpha = scale·k, so continuing training at the same learning rate behaves the same.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from trainer.formats.kohya_import import ModuleWeights, read_kohya
from trainer.formats.save import SaveResult, save_tensors


class ResizeError(ValueError):
    pass


@dataclass
class ModuleResize:
    name: str
    rank_before: int
    rank_after: int
    kept_energy: float
    weight_error: float  # relative Frobenius error of ΔW


@dataclass
class ResizeReport:
    modules: list[ModuleResize] = field(default_factory=list)
    kept_energy: float = 1.0  # over all modules: Σ kept σ² / Σ σ²
    weight_error: float = 0.0  # over all modules: ‖ΔW − ΔW_k‖ / ‖ΔW‖ (stacked)
    result: dict | None = None

    def text(self) -> str:
        worst = max(self.modules, key=lambda m: m.weight_error)
        ranks = sorted({m.rank_after for m in self.modules})
        return (f"{len(self.modules)} modules → rank {ranks[0]}" + (f"–{ranks[-1]}" if len(ranks) > 1 else "")
                + f"; kept energy {self.kept_energy:.4%}, weight error {self.weight_error:.4%} "
                f"(worst {worst.name}: {worst.weight_error:.4%})")


def _pick_rank(s: torch.Tensor, rank: int | None, energy: float | None) -> int:
    full = int((s > s.max() * 1e-7).sum()) if s.numel() and s.max() > 0 else 1
    if rank is not None:
        return max(1, min(rank, full))
    cum = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
    return max(1, min(full, int((cum < energy - 1e-12).sum()) + 1))


def resize_module(mw: ModuleWeights, rank: int | None, energy: float | None):
    if mw.algo != "lora":
        raise ResizeError(f"{mw.name}: only LoRA modules can be resized ({mw.algo.upper()} found)")
    down, up = mw.tensors["lora_down.weight"].double(), mw.tensors["lora_up.weight"].double()
    r, scale = down.shape[0], mw.scale
    delta = scale * (up.reshape(up.shape[0], r) @ down.reshape(r, -1))
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = _pick_rank(s, rank, energy)
    total = float((s ** 2).sum())
    kept = min(total, float((s[:k] ** 2).sum()))
    root = torch.sqrt(s[:k] / scale) if scale > 0 else torch.sqrt(s[:k])
    new_up = (u[:, :k] * root).reshape(up.shape[0], k, *up.shape[2:])
    new_down = (root[:, None] * vh[:k]).reshape(k, *down.shape[1:])
    approx = scale * (new_up.reshape(up.shape[0], k) @ new_down.reshape(k, -1))
    err = float((delta - approx).norm() / delta.norm()) if total > 0 else 0.0
    out = {f"{mw.name}.lora_down.weight": new_down.float(), f"{mw.name}.lora_up.weight": new_up.float(),
           f"{mw.name}.alpha": torch.tensor(scale * k, dtype=torch.float32)}
    if "dora_scale" in mw.tensors:
        out[f"{mw.name}.dora_scale"] = mw.tensors["dora_scale"]
    stats = ModuleResize(mw.name, r, k, kept / total if total > 0 else 1.0, err)
    return out, stats, total, total - kept


def resize_file(src, dst, rank: int | None = None, energy: float | None = None, dtype: str | None = None,
                overwrite: bool = False) -> tuple[SaveResult, ResizeReport]:
    if (rank is None) == (energy is None):
        raise ResizeError("give exactly one of rank or energy")
    if rank is not None and rank < 1:
        raise ResizeError("rank must be at least 1")
    if energy is not None and not 0 < energy <= 1:
        raise ResizeError("energy must be in (0, 1]")
    kf = read_kohya(src)
    tensors, rep = {}, ResizeReport()
    total = lost = 0.0
    for mw in kf.modules.values():
        t, stats, tot, lo = resize_module(mw, rank, energy)
        tensors.update(t)
        rep.modules.append(stats)
        total, lost = total + tot, lost + lo
    rep.kept_energy = (total - lost) / total if total > 0 else 1.0
    rep.weight_error = math.sqrt(max(0.0, lost) / total) if total > 0 else 0.0
    meta = dict(kf.metadata)
    ranks = {m.rank_after for m in rep.modules}
    before = sorted({m.rank_before for m in rep.modules})
    if rank is not None and len(ranks) == 1:
        meta["ss_network_dim"] = str(ranks.pop())
        scales = {round(kf.modules[m.name].scale, 9) for m in rep.modules}
        if len(scales) == 1:
            meta["ss_network_alpha"] = str(float(scales.pop() * int(meta["ss_network_dim"])))
    else:
        meta["ss_network_dim"] = "Dynamic"
        meta["ss_network_alpha"] = "Dynamic"
    how = f"rank {rank}" if rank is not None else f"energy {energy:g}"
    meta["ss_training_comment"] = (f"dimension resized from {'/'.join(map(str, before))} by {how}; kept energy "
                                   f"{rep.kept_energy:.6f}, weight error {rep.weight_error:.6f}")
    if dtype is None:
        first = next(iter(kf.modules.values())).tensors["lora_down.weight"].dtype
        dtype = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(first, "fp32")
    res = save_tensors(dst, tensors, meta, dtype, overwrite)
    rep.result = {"path": res.path.name, "sshs_model_hash": res.model_hash, "sha256": res.sha256}
    return res, rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer resize", description=__doc__.split("\n\n")[0])
    ap.add_argument("file")
    ap.add_argument("--out", required=True, help="the new file (must not exist)")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--rank", type=int, help="fixed rank for every module")
    g.add_argument("--energy", type=float, help="keep this fraction of the squared singular values (e.g. 0.95)")
    ap.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="save dtype (default: the input's)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        _, rep = resize_file(Path(a.file), Path(a.out), a.rank, a.energy, a.dtype)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(rep), indent=1) if a.json else rep.text())
    return 0
