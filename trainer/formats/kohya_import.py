"""Read a kohya / LyCORIS adapter (ours or a Civitai one) into peft layers.

- `load_kohya_into(base, path)`: into the adapters build_network injected (continue training from a
  file). Parameters keep their identity (only `.data` changes), so lists of trainable parameters
  taken before the load stay valid; a module whose rank in the file differs from the injected one
  takes the file's rank and alpha.
- `apply_kohya(base, path, strength)`: into a fresh base (preview, merge): injects peft layers on
  exactly the file's modules with its ranks, loads them, sets the strength.

Scales follow the clients: alpha / dim with dim = lora_down.shape[0] (LoRA), hada_w1_b.shape[0]
(LoHa), the decomposed factor's rank (LoKr, scale 1 when both factors are full); no alpha → 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.formats.names import Site, adapted_sites, all_sites, diffusers_alias
from trainer.formats.safetensors_io import load_file_checked
from trainer.adapter import ADAPTER

LORA_KEYS = ("lora_down.weight", "lora_up.weight")
LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
KNOWN_SUFFIXES = set(LORA_KEYS) | set(LOHA_KEYS) | set(LOKR_KEYS) | {"alpha", "dora_scale"}


class KohyaImportError(ValueError):
    pass


@dataclass
class ModuleWeights:
    name: str
    algo: str  # lora / loha / lokr
    tensors: dict[str, torch.Tensor]  # suffix → tensor (without alpha)
    alpha: float | None

    @property
    def dim(self) -> int | None:
        t = self.tensors
        if self.algo == "lora":
            return t["lora_down.weight"].shape[0]
        if self.algo == "loha":
            return t["hada_w1_b"].shape[0]
        for k in ("lokr_w1_b", "lokr_w2_b"):
            if k in t:
                return t[k].shape[0]
        return None

    @property
    def scale(self) -> float:
        """The multiplier clients apply to the product of the factors."""
        dim = self.dim
        return self.alpha / dim if (self.alpha is not None and dim) else 1.0


@dataclass
class KohyaFile:
    path: Path
    metadata: dict
    modules: dict[str, ModuleWeights]


def parse_state_dict(tensors: dict[str, torch.Tensor], source: str = "state dict") -> dict[str, ModuleWeights]:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if "." not in key:
            raise KohyaImportError(f"{source}: key {key!r} is not <module>.<tensor>")
        mod, suffix = key.split(".", 1)
        if suffix not in KNOWN_SUFFIXES:
            raise KohyaImportError(f"{source}: {key}: unsupported tensor kind {suffix!r} "
                                   "(LoRA, DoRA, LoHa and LoKr are supported)")
        grouped.setdefault(mod, {})[suffix] = t
    out = {}
    for mod, parts in grouped.items():
        alpha_t = parts.pop("alpha", None)
        alpha = float(alpha_t.float().reshape(-1)[0]) if alpha_t is not None else None
        if all(k in parts for k in LORA_KEYS):
            algo = "lora"
        elif all(k in parts for k in LOHA_KEYS[:4]):
            algo = "loha"
        elif ("lokr_w1" in parts or {"lokr_w1_a", "lokr_w1_b"} <= parts.keys()) and \
                ("lokr_w2" in parts or {"lokr_w2_a", "lokr_w2_b"} <= parts.keys()):
            algo = "lokr"
        else:
            raise KohyaImportError(f"{source}: module {mod} has an incomplete set of tensors {sorted(parts)}")
        out[mod] = ModuleWeights(mod, algo, parts, alpha)
    if not out:
        raise KohyaImportError(f"{source}: no adapter tensors")
    return out


def read_kohya(path) -> KohyaFile:
    path = Path(path)
    tensors, metadata = load_file_checked(path)
    return KohyaFile(path, metadata, parse_state_dict(tensors, path.name))


@dataclass
class ImportReport:
    path: str
    loaded: list[str] = field(default_factory=list)
    rank_changed: list[str] = field(default_factory=list)  # took the file's rank
    not_in_model: list[str] = field(default_factory=list)  # in the file, no adapter here: ignored
    not_in_file: list[str] = field(default_factory=list)  # adapters the file does not cover: unchanged

    def summary(self) -> str:
        s = f"{Path(self.path).name}: loaded {len(self.loaded)} modules"
        if self.rank_changed:
            s += f", {len(self.rank_changed)} with the file's rank"
        if self.not_in_model:
            s += f"; {len(self.not_in_model)} in the file have no adapter here (ignored, e.g. {self.not_in_model[0]})"
        if self.not_in_file:
            s += f"; {len(self.not_in_file)} adapters not in the file kept their initial weights"
        return s


def _lookup(base, sites: dict[str, Site]) -> dict[str, Site]:
    table = dict(sites)
    for site in sites.values():
        alias = diffusers_alias(site, base.family)
        if alias:
            table.setdefault(alias, site)
    return table


def _set(param: torch.nn.Parameter, value: torch.Tensor) -> bool:
    """Copy `value` into `param`, keeping the Parameter object; True when the shape changed."""
    value = value.to(device=param.device, dtype=param.dtype)
    if param.shape == value.shape:
        with torch.no_grad():
            param.copy_(value)
        return False
    param.data = value.clone().contiguous()
    return True


def _fit(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """2-D ⇄ 4-D (1×1) spellings of the same matrix."""
    if t.dim() == ndim:
        return t
    if t.dim() == 4 and ndim == 2 and t.shape[2:] == (1, 1):
        return t[:, :, 0, 0]
    if t.dim() == 2 and ndim == 4:
        return t[:, :, None, None]
    return t


def _set_scale(layer, adapter: str, scale: float) -> None:
    layer.scaling[adapter] = scale
    layer.__dict__.pop("_atelier_scale0", None)  # a preview strength set earlier no longer applies


def _load_lora(layer, mw: ModuleWeights, adapter: str) -> bool:
    from peft.tuners.adalora.layer import AdaLoraLayer

    if isinstance(layer, AdaLoraLayer):
        raise KohyaImportError(f"{mw.name}: loading into AdaLoRA layers is not supported")
    a, b = layer.lora_A[adapter], layer.lora_B[adapter]
    down = _fit(mw.tensors["lora_down.weight"], a.weight.dim())
    up = _fit(mw.tensors["lora_up.weight"], b.weight.dim())
    if down.shape[1:] != a.weight.shape[1:] or up.shape[0] != b.weight.shape[0]:
        raise KohyaImportError(f"{mw.name}: shapes {tuple(down.shape)}/{tuple(up.shape)} do not fit the layer "
                               f"({tuple(a.weight.shape)}/{tuple(b.weight.shape)}): a file for another model?")
    changed = _set(a.weight, down) | _set(b.weight, up)
    r = down.shape[0]
    if isinstance(a, torch.nn.Linear):
        a.out_features, b.in_features = r, r
    else:
        a.out_channels, b.in_channels = r, r
    layer.r[adapter] = r
    layer.lora_alpha[adapter] = mw.alpha if mw.alpha is not None else r
    _set_scale(layer, adapter, mw.scale)
    from trainer.adapter.dora import dora_axis

    if dora_axis(layer, adapter):
        _load_magnitude(layer, mw, adapter)
    elif "dora_scale" in mw.tensors:
        raise KohyaImportError(f"{mw.name}: the file is DoRA (dora_scale) but the layer is plain LoRA; "
                               "turn on network.use_dora to load it")
    return changed


def _load_magnitude(layer, mw: ModuleWeights, adapter: str) -> None:
    from trainer.adapter.dora import base_weight, col_norm, dora_axis, lora_delta, row_norm

    mag = layer.lora_magnitude_vector[adapter].weight
    axis = dora_axis(layer, adapter)
    base_w = base_weight(layer)  # dequantised for a 4-bit base
    n = base_w.shape[0] if axis == "out" else base_w.shape[1]
    if "dora_scale" in mw.tensors:
        ds = mw.tensors["dora_scale"]
        fits = ds.numel() == n and (ds.shape[0] == n if axis == "out" else ds.shape[0] == 1 or ds.dim() == 1)
        if not fits:
            want = f"[{n}, 1] per output row" if axis == "out" else f"[1, {n}] per input column"
            other = "in" if axis == "out" else "out"
            raise KohyaImportError(f"{mw.name}: dora_scale {tuple(ds.shape)} is not {want}; "
                                   f"set network.dora_axis = {other!r} to load this file")
        _set(mag, ds.reshape(mag.shape))
        return
    # DoRA layer, plain LoRA file: the magnitude that makes DoRA equal W + scale·ΔW
    with torch.no_grad():
        w = base_w + lora_delta(layer, adapter).float()
        _set(mag, (row_norm(w) if axis == "out" else col_norm(w)).reshape(mag.shape))


def _load_lycoris(layer, mw: ModuleWeights, adapter: str, keys: tuple[str, ...], fresh: bool) -> bool:
    changed = False
    for key in keys:
        pdict = getattr(layer, key)
        if key in mw.tensors:
            t = mw.tensors[key]
            if adapter in pdict:
                changed |= _set(pdict[adapter], t)
            elif fresh:
                pdict[adapter] = torch.nn.Parameter(t.to(layer.get_base_layer().weight.device).clone())
                changed = True
            else:
                raise KohyaImportError(f"{mw.name}: the file has {key} but the injected layer does not "
                                       "(other factorisation); start without network.init_weights or match it")
        elif adapter in pdict:
            if not fresh:
                raise KohyaImportError(f"{mw.name}: the injected layer has {key} but the file does not")
            del pdict[adapter]
            changed = True
    if mw.dim is not None:
        layer.r[adapter] = mw.dim
    layer.alpha[adapter] = mw.alpha if mw.alpha is not None else layer.r[adapter]
    _set_scale(layer, adapter, mw.scale)
    return changed


def _load_module(site: Site, mw: ModuleWeights, adapter: str, fresh: bool) -> bool:
    from trainer.formats.kohya_export import algo_of

    algo = algo_of(site.module)
    if algo != mw.algo:
        raise KohyaImportError(f"{mw.name}: the file holds {mw.algo.upper()} but the layer is {algo.upper()}; "
                               f"set network.algo = {mw.algo!r}")
    if algo == "lora":
        return _load_lora(site.module, mw, adapter)
    return _load_lycoris(site.module, mw, adapter, LOHA_KEYS if algo == "loha" else LOKR_KEYS, fresh)


def _load(base, kf: KohyaFile, adapter: str, fresh: bool) -> ImportReport:
    sites = adapted_sites(base)
    table = _lookup(base, sites)
    rep = ImportReport(path=str(kf.path))
    covered = set()
    for name, mw in kf.modules.items():
        site = table.get(name)
        if site is None:
            rep.not_in_model.append(name)
            continue
        if _load_module(site, mw, adapter, fresh):
            rep.rank_changed.append(name)
        rep.loaded.append(name)
        covered.add(site.kohya)
    rep.not_in_file = sorted(set(sites) - covered)
    if not rep.loaded:
        raise KohyaImportError(f"{kf.path.name}: none of its {len(kf.modules)} modules matches an adapter of this "
                               f"{base.family} model (e.g. {next(iter(kf.modules))}); wrong base family?")
    return rep


def load_kohya_into(base, path, adapter: str = ADAPTER) -> ImportReport:
    """Load a kohya/LyCORIS file into the adapters already injected into `base` (build_network)."""
    return _load(base, read_kohya(path), adapter, fresh=False)


def _inject_for(base, kf: KohyaFile) -> None:
    from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model

    table = _lookup(base, all_sites(base))
    per_comp: dict[str, dict[str, list]] = {}
    unknown = []
    for name, mw in kf.modules.items():
        site = table.get(name)
        if site is None:
            unknown.append(name)
            continue
        per_comp.setdefault(site.component, {}).setdefault(mw.algo, []).append((site.path, mw))
    if unknown:
        raise KohyaImportError(f"{kf.path.name}: {len(unknown)} module(s) match no layer of this {base.family} "
                               f"model, e.g. {unknown[0]}")
    models = dict([("unet", base.unet)] + [(f"te{i}", te) for i, te in enumerate(base.text_encoders)])
    for comp, by_algo in per_comp.items():
        if len(by_algo) > 1:
            raise KohyaImportError(f"{kf.path.name}: mixes {sorted(by_algo)} in one model; not supported")
        (algo, items), = by_algo.items()
        paths = [p for p, _ in items]
        ranks = {p: (mw.dim or 1) for p, mw in items}
        r0 = max(ranks.values())
        common = dict(target_modules=paths, rank_pattern={p: r for p, r in ranks.items() if r != r0})
        column_dora, dora = False, None
        if algo == "lora":
            scales = [mw.tensors["dora_scale"] for _, mw in items if "dora_scale" in mw.tensors]
            # [1, in] is A1111's per-input-column layout (trainer.adapter.dora.ColumnDora); [out, 1] is peft's
            column_dora = any(t.shape[0] == 1 and t.numel() > 1 for t in scales)
            dora = ("in" if column_dora else "out") if scales else None
            config = LoraConfig(r=r0, lora_alpha=r0, use_dora=False, init_lora_weights=True, **common)
        elif algo == "loha":
            config = LoHaConfig(r=r0, alpha=r0, init_weights=True, **common)
        else:
            config = LoKrConfig(r=r0, alpha=r0, init_weights=True, **common)
        for p in models[comp].parameters():
            p.requires_grad_(False)
        inject_adapter_in_model(config, models[comp], adapter_name=ADAPTER)
        if dora:
            from trainer.adapter.dora import attach_dora

            attach_dora(models[comp], ADAPTER, dora)


def apply_kohya(base, path, strength: float = 1.0) -> ImportReport:
    """Inject peft layers on exactly the file's modules of a base without adapters, load the file,
    and set the strength (the clients' LoRA weight)."""
    from trainer.adapter.network import set_adapter_scale

    kf = read_kohya(path)
    if adapted_sites(base):
        raise KohyaImportError("apply_kohya needs a base without adapters; use load_kohya_into for a trained one")
    _inject_for(base, kf)
    rep = _load(base, kf, ADAPTER, fresh=True)
    if strength != 1.0:
        for model in [base.unet, *base.text_encoders]:
            set_adapter_scale(model, strength)
    return rep
