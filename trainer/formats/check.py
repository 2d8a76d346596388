"""`python -m trainer check FILE [--json] [--base SPEC]`: will A1111 / Forge / ComfyUI / diffusers /
sd-scripts apply this adapter as trained? A verdict (pass / warn / fail) with reasons.

Checks: header (duplicate keys, offsets), architecture (from metadata and from key names/shapes),
every module name and shape against the reference table (lora_keys/*.tsv for real SD1.5 / SDXL, a
meta-built model for SD2, the given base for anything else), keys clients ignore (PEFT/diffusers
style, lora_te1 on SD1, a missing text_model level, the bare lycoris_ prefix), 2-D tensors on 1×1
convs, missing alpha, alpha/rank against ss_network_alpha, non-finite values, the sshs hash; then a
verdict per client (ComfyUI, A1111/Forge, sd-scripts, diffusers: applies it as trained, or why not),
from the clients' rules in docs/adapter-format.md. A file that names the custom base it fits
(metadata CUSTOM_BASE_KEY, e.g. the demo base builtin:shapes) is checked against that base.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from trainer.formats import safetensors_io as sio
from trainer.formats.kohya_import import KNOWN_SUFFIXES
from trainer.formats.metadata import custom_base, privacy_problems
from trainer.formats.verdicts import CLIENTS, verdict_text

FAMILY_FROM_VERSION = {"sd_v1": "sd1", "sd_v2": "sd2", "sd_v2_v": "sd2-v", "sdxl_base_v1-0": "sdxl"}
CROSS_DIM = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


@dataclass
class Finding:
    severity: str  # error / warning / info
    code: str
    message: str


@dataclass
class Report:
    file: str
    verdict: str = "pass"
    family: str = "unknown"
    family_source: str = ""
    reference: str = ""
    modules: int = 0
    algo: str = ""
    scales: list = field(default_factory=list)
    dora_clients: dict = field(default_factory=dict)
    dora_axis: str = ""  # "out" / "in" for a DoRA file
    findings: list = field(default_factory=list)
    clients: list = field(default_factory=list)  # [{"client", "ok", "reason"}] in verdicts.CLIENTS order

    def add(self, severity: str, code: str, message: str) -> None:
        self.findings.append(Finding(severity, code, message))

    def finish(self) -> "Report":
        sev = {f.severity for f in self.findings}
        self.verdict = "fail" if "error" in sev else "warn" if "warning" in sev else "pass"
        if self.verdict == "pass" and self.clients and not all(c["ok"] for c in self.clients):
            self.verdict = "warn"  # valid, but some client will not apply it as trained
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = [f"{self.file}: {self.verdict.upper()}",
                 f"  architecture: {self.family} ({self.family_source}); {self.modules} modules, {self.algo or '?'}"
                 + (f"; checked against {self.reference}" if self.reference else "")]
        if self.scales:
            lines.append("  scale alpha/dim: " + ", ".join(f"{s:g}" for s in self.scales[:8])
                         + (" …" if len(self.scales) > 8 else ""))
        lines += verdict_text(self.to_dict())
        for f in self.findings:
            lines.append(f"  [{f.severity}] {f.code}: {f.message}")
        return "\n".join(lines)


def _split(key: str) -> tuple[str, str]:
    return tuple(key.split(".", 1)) if "." in key else (key, "")


def _classify_keys(rep: Report, tensors: dict) -> dict[str, dict]:
    """kohya modules (name → {suffix: header entry}); findings for keys clients ignore."""
    peft, bare, odd, kohya = [], [], [], {}
    for key, info in tensors.items():
        if ".lora_A." in key or ".lora_B." in key or ".lora.down." in key or ".lora.up." in key or \
                key.startswith(("unet.", "text_encoder.", "text_encoder_2.", "transformer.")):
            peft.append(key)
            continue
        if key.startswith("lycoris_"):
            bare.append(key)
            continue
        mod, suffix = _split(key)
        if not mod.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) or suffix not in KNOWN_SUFFIXES:
            odd.append(key)
            continue
        kohya.setdefault(mod, {})[suffix] = info
    if peft:
        rep.add("error", "peft_keys", f"{len(peft)} keys in diffusers/PEFT style (e.g. {peft[0]}): only diffusers "
                "loads them; ComfyUI drops the UNet attention layers, A1111 and sd-scripts drop every key")
    if bare:
        rep.add("error", "lycoris_prefix", f"{len(bare)} keys with LyCORIS' bare 'lycoris_' prefix (e.g. {bare[0]}): "
                "A1111, ComfyUI and diffusers ignore them; use lora_unet_/lora_te_ prefixes")
    if odd:
        rep.add("error", "unknown_keys", f"{len(odd)} keys no client maps (e.g. {odd[0]})")
    return kohya


def _algo(parts: dict) -> str:
    if "lora_down.weight" in parts:
        return "lora"
    if "hada_w1_a" in parts:
        return "loha"
    if any(k.startswith("lokr_") for k in parts):
        return "lokr"
    return "?"


def _detect_family(rep: Report, meta: dict, mods: dict) -> None:
    fam_meta = FAMILY_FROM_VERSION.get(meta.get("ss_base_model_version", ""))
    if fam_meta == "sd2" and meta.get("ss_v_parameterization") == "True":
        fam_meta = "sd2-v"
    if not fam_meta and meta.get("modelspec.architecture", "").startswith("stable-diffusion-xl"):
        fam_meta = "sdxl"
    names = list(mods)
    fam_keys = None
    if any(n.startswith(("lora_unet_input_blocks", "lora_unet_output_blocks", "lora_unet_middle_block"))
           for n in names) or any(n.startswith("lora_te2_") for n in names):
        fam_keys = "sdxl"
    for n, parts in mods.items():
        if n.endswith("attn2_to_k") and "lora_down.weight" in parts:
            fam_keys = CROSS_DIM.get(parts["lora_down.weight"]["shape"][1], fam_keys)
            break
    if fam_meta and fam_keys and fam_meta.replace("-v", "") != fam_keys:
        rep.add("warning", "family_mismatch", f"metadata says {fam_meta} but the keys/shapes look like {fam_keys}")
    rep.family = fam_keys if fam_keys and not fam_meta else (fam_meta or "unknown")
    if fam_meta == "sd2-v" and fam_keys in (None, "sd2"):
        rep.family = "sd2-v"
    rep.family_source = "metadata" + (" + keys" if fam_keys else "") if fam_meta else ("keys" if fam_keys else "none")


def _expected(rep: Report, base, custom: str | None = None):
    from trainer.formats.expected import read_table, table_for

    try:
        if base is not None:
            table, src = table_for(base.family, base)
        elif custom:  # the file fits a base of its own shapes: the standard tables do not apply
            return None
        elif rep.family in ("sd1", "sdxl"):
            table, src = read_table("sd15" if rep.family == "sd1" else "sdxl"), \
                f"lora_keys/{'sd15' if rep.family == 'sd1' else 'sdxl'}.tsv"
        elif rep.family in ("sd2", "sd2-v"):
            from trainer.formats.expected import derive_from_model
            from trainer.models.base import Base
            from trainer.models.random_arch import build_random

            m = build_random(rep.family, ("unet", "text_encoder"), device="meta")
            table = derive_from_model(Base(family=rep.family, unet=m["unet"], vae=None,
                                           text_encoders=[m["text_encoder"]], tokenizers=[], scheduler=None))
            src = f"the {rep.family} architecture (bundled config)"
        else:
            return None
    except Exception as e:  # a reference we cannot build is a note, not a verdict
        rep.add("info", "no_reference", f"no reference names ({e})")
        return None
    rep.reference = src
    return table


def _shape_problem(parts: dict, want: tuple, algo: str) -> str | None:
    if algo != "lora":
        return None
    down, up = parts["lora_down.weight"]["shape"], parts["lora_up.weight"]["shape"]
    if len(want) == 4 and (len(down) != 4 or len(up) != 4):
        return (f"{len(down)}-D tensors on a {want[2]}×{want[3]} conv (needs 4-D: 2-D ones crash sd-scripts and "
                "diffusers)")
    if len(want) == 2 and (len(down) != 2 or len(up) != 2):
        return "4-D tensors on a Linear layer"
    if up[0] != want[0] or down[1] != want[1] or down[0] != up[1] or \
            (len(want) == 4 and (tuple(down[2:]) != tuple(want[2:]) or tuple(up[2:]) != (1, 1))):
        return f"shapes down {down} / up {up} do not fit the layer's weight {list(want)}"
    return None


def _check_names(rep: Report, mods: dict, table: dict | None) -> None:
    names = list(mods)
    if rep.family in ("sd1", "sd2", "sd2-v") and any(n.startswith(("lora_te1_", "lora_te2_")) for n in names):
        rep.add("error", "te1_on_sd1", "text-encoder keys named lora_te1_… on an SD1/SD2 adapter: sd-scripts and "
                "A1111 expect lora_te_… and ignore the text-encoder part")
    if rep.family == "sdxl" and any(n.startswith("lora_te_") for n in names):
        rep.add("error", "te_on_sdxl", "lora_te_… on an SDXL adapter: clients expect lora_te1_/lora_te2_")
    no_tm = [n for n in names if n.startswith(("lora_te_", "lora_te1_", "lora_te2_")) and "_text_model_" not in n]
    if no_tm:
        rep.add("error", "no_text_model_level", f"{len(no_tm)} text-encoder names lack the text_model_ level "
                f"(e.g. {no_tm[0]}; transformers 5 module names): clients ignore them")
    if table is None:
        rep.add("info", "names_unchecked", "unknown architecture: names and shapes not checked (pass --base)")
        return
    unknown, bad_shape = [], []
    for n, parts in mods.items():
        if n not in table:
            unknown.append(n)
            continue
        problem = _shape_problem(parts, table[n].weight_shape, _algo(parts))
        if problem:
            bad_shape.append((n, problem))
    if unknown:
        rep.add("error", "unexpected_modules", f"{len(unknown)} module names this architecture does not have "
                f"(clients ignore them), e.g. {unknown[0]}")
    for n, problem in bad_shape[:5]:
        rep.add("error", "bad_shape", f"{n}: {problem}")
    if len(bad_shape) > 5:
        rep.add("error", "bad_shape", f"… and {len(bad_shape) - 5} more modules with wrong shapes")
    default = {n for n, e in table.items() if e.target == "default"}
    present = set(mods) & set(table)
    rep.add("info", "coverage", f"{len(present & default)} of {len(default)} default (attention/MLP) modules, "
            f"{len(present - default)} LoCon modules")


def _check_alpha_and_values(rep: Report, path: Path, mods: dict, meta: dict) -> None:
    tensors, _ = sio.load_file_checked(path)
    missing = [n for n, p in mods.items() if "alpha" not in p]
    scales = set()
    for n, parts in mods.items():
        if "alpha" in parts:
            alpha = float(tensors[f"{n}.alpha"].float().reshape(-1)[0])
            algo = _algo(parts)
            dim_key = {"lora": "lora_down.weight", "loha": "hada_w1_b"}.get(algo)
            dim = parts[dim_key]["shape"][0] if dim_key and dim_key in parts else None
            if algo == "lokr":
                dim = next((parts[k]["shape"][0] for k in ("lokr_w1_b", "lokr_w2_b") if k in parts), None)
            if dim:
                scales.add(round(alpha / dim, 6))
    rep.scales = sorted(scales)
    if missing:
        net_alpha, net_dim = meta.get("ss_network_alpha"), meta.get("ss_network_dim")
        trained_other = False
        try:
            trained_other = net_alpha is not None and net_dim is not None and float(net_alpha) != float(net_dim)
        except ValueError:
            pass
        rep.add("error" if trained_other else "warning", "missing_alpha",
                f"{len(missing)} modules without .alpha (e.g. {missing[0]}): every client then applies scale 1"
                + (f", but ss_network_alpha={net_alpha} / dim {net_dim} says training used another scale"
                   if trained_other else "; right only if training used alpha = rank"))
    elif meta.get("ss_network_alpha") and meta.get("ss_network_dim", "").isdigit():
        want = float(meta["ss_network_alpha"]) / int(meta["ss_network_dim"])
        if not any(abs(s - want) <= 1e-3 * max(1.0, abs(want)) for s in scales):
            rep.add("warning", "alpha_vs_metadata", f"no module has the scale ss_network_alpha/ss_network_dim = "
                    f"{want:g}; file scales: {', '.join(f'{s:g}' for s in sorted(scales)[:5])}")
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        rep.add("error", "non_finite", f"{len(bad)} tensors hold NaN/inf (e.g. {bad[0]}): the adapter breaks images")
    dtypes = sorted({str(t.dtype).replace("torch.", "") for k, t in tensors.items() if not k.endswith(".alpha")})
    rep.add("info", "dtype", "tensors in " + ", ".join(dtypes))
    if any("dora_scale" in p for p in mods.values()):
        _dora(rep, mods)
    if any(n.startswith(("lora_te_", "lora_te1_")) for n in mods) and \
            not any(n.startswith(("lora_te_", "lora_te1_")) and n.endswith("out_proj") for n in mods):
        rep.add("warning", "diffusers_te_quirk", "text-encoder LoRA without any out_proj module: diffusers "
                "(0.42) only recognises kohya text-encoder keys when an out_proj is present and drops them")


def _dora(rep: Report, mods: dict) -> None:
    from trainer.adapter.dora import compatibility

    axes = set()
    for n, parts in mods.items():
        if "dora_scale" in parts:
            ds, up = parts["dora_scale"]["shape"], parts.get("lora_up.weight", {}).get("shape")
            if up and ds[0] == up[0] and ds[0] != 1 and all(d == 1 for d in ds[1:]):
                axes.add("out")
            elif len(ds) >= 2 and ds[0] == 1:
                axes.add("in")
            else:
                axes.add("?")
    if len(axes) != 1 or "?" in axes:
        rep.add("error", "dora_axis", f"dora_scale shapes of mixed or unknown axes {sorted(axes)}: no client "
                "applies this file as trained")
        return
    axis = axes.pop()
    rep.dora_axis = axis
    support = compatibility(axis)  # one table of client behaviour, shared with trainer.adapter.dora's tests
    rep.dora_clients = {client: ok for client, (ok, _) in support.items()}
    rep.dora_clients["LoRA Atelier"] = True
    layout = "per output row [out, 1]" if axis == "out" else "per input column [1, in]"
    wrong = [f"{c}: {why}" for c, (ok, why) in support.items() if not ok]
    rep.add("warning", "dora", f"DoRA (dora_scale {layout}); applied as trained by "
            f"{', '.join(c for c, (ok, _) in support.items() if ok)}; not by " + "; ".join(wrong))


def _check_metadata(rep: Report, path: Path, meta: dict) -> None:
    if not meta:
        rep.add("warning", "no_metadata", "no metadata: A1111 cannot tell the base model version (an SDXL LoRA is "
                "hidden from SDXL models) and Civitai cannot link images by sshs_model_hash")
        return
    ver = meta.get("ss_base_model_version")
    custom = custom_base(meta)
    if custom:
        rep.add("warning", "custom_base", f"trained on {custom}, a base whose layers differ from SD1.5/SD2/SDXL: "
                "the file fits only that base; no client's SD1.5/SDXL model can take it")
    elif not ver:
        rep.add("warning", "no_base_version", "no ss_base_model_version: A1111 may list it for the wrong models")
    elif rep.family == "sdxl" and not ver.startswith("sdxl_"):
        rep.add("warning", "sdxl_version", f"ss_base_model_version={ver!r}: A1111 hides SDXL LoRAs without the sdxl_ "
                "prefix from the SDXL model's list")
    stored = meta.get("sshs_model_hash")
    if stored:
        actual = sio.model_hash(path)
        if stored != actual:
            rep.add("warning", "stale_hash", "sshs_model_hash does not match the tensor data (Civitai/A1111 links "
                    "and infotext will be wrong)")
    else:
        rep.add("info", "no_model_hash", "no sshs_model_hash (A1111 computes it on load)")
    for problem in privacy_problems(meta):
        rep.add("warning", "privacy", problem)


def check_file(path, base=None) -> Report:
    """The compatibility report of an adapter file; `base` (a Base) gives the expected names for
    models without a reference table (tiny, custom)."""
    path = Path(path)
    rep = Report(file=path.name)
    try:
        hdr = sio.read_header(path)
    except sio.SafetensorsError as e:
        rep.add("error", "unreadable", str(e))
        return rep.finish()
    mods = _classify_keys(rep, hdr.tensors)
    rep.modules = len(mods)
    rep.algo = ", ".join(sorted({_algo(p) for p in mods.values()}))
    custom = custom_base(hdr.metadata)
    if base is None and custom and custom.startswith(("builtin:", "tiny:")):
        base = _named_base(rep, custom)  # the bundled base the file names: check against it, no flag needed
    table = None
    if mods:
        _detect_family(rep, hdr.metadata, mods)
        if base is not None and rep.family == "unknown":
            rep.family, rep.family_source = base.family, "the base it fits"
        if base is not None and rep.family not in ("unknown", base.family) and \
                rep.family.replace("-v", "") != base.family.replace("-v", ""):
            rep.add("error", "wrong_base", f"adapter looks like {rep.family}, the base is {base.family}")
        table = _expected(rep, base, custom)
        _check_names(rep, mods, table)
        _check_alpha_and_values(rep, path, mods, hdr.metadata)
    elif not rep.findings:
        rep.add("error", "no_adapter", "no adapter tensors")
    _check_metadata(rep, path, hdr.metadata)
    rep.clients = _client_verdicts(rep, mods, table, custom)
    return rep.finish()


def _named_base(rep: Report, spec: str):
    from trainer.models.resolve import load_any

    try:
        return load_any(spec)
    except Exception as e:  # the file stays checkable without it
        rep.add("info", "no_reference", f"cannot build {spec}, the base the file names ({e})")
        return None


# error findings that stop only some clients (all others stop every client)
FINDING_CLIENTS = {
    "peft_keys": ("ComfyUI", "A1111/Forge", "sd-scripts"),
    "te1_on_sd1": ("A1111/Forge", "sd-scripts"),
    "diffusers_te_quirk": ("diffusers",),
    "sdxl_version": ("A1111/Forge",),
}
WARNINGS_FOR_CLIENTS = {"diffusers_te_quirk", "sdxl_version", "custom_base"}
DORA_CLIENT = {"comfyui": "ComfyUI", "a1111": "A1111/Forge", "sd-scripts": "sd-scripts", "diffusers": "diffusers"}
LYCORIS_TYPES = {
    "sd-scripts": "LyCORIS types (LoHa/LoKr) not supported: its networks.lora applies only lora_down/lora_up keys",
    "diffusers": "its SD/SDXL LoRA loader refuses LoHa/LoKr keys (ValueError)",
}
LOCON_NAME = ("_resnets_", "_in_layers_", "_out_layers_", "_emb_layers_", "_skip_connection", "_downsamplers_",
              "_upsamplers_", "_op", "time_emb_proj", "conv_shortcut")


def _mixed_ranks(mods: dict, table: dict | None) -> bool:
    """Do the default-target (attention/MLP) LoRA modules have more than one rank? diffusers then
    maps per-module ranks and alphas through peft's rank/alpha patterns, which 0.42 mis-assigns for some
    modules and 0.32 drops; one rank and alpha per group (LoCon convs being their own group) is safe."""
    ranks = set()
    for n, parts in mods.items():
        if "lora_down.weight" not in parts:
            continue
        locon = table[n].target == "locon" if table and n in table else any(t in n for t in LOCON_NAME)
        if not locon:
            ranks.add(parts["lora_down.weight"]["shape"][0])
    return len(ranks) > 1


def _client_verdicts(rep: Report, mods: dict, table: dict | None, custom: str | None) -> list[dict]:
    """Will each client apply the file as trained? The first reason that stops a client is kept."""
    why: dict[str, list[str]] = {c: [] for c in CLIENTS}
    ok_note: dict[str, str] = {c: "applies it as trained" for c in CLIENTS}
    if custom:
        for c in CLIENTS:
            why[c].append(f"fits only {custom}, the base it was trained on (no SD1.5/SDXL model has its layers)")
    for f in rep.findings:
        if f.severity == "error" or (f.severity == "warning" and f.code in WARNINGS_FOR_CLIENTS - {"custom_base"}):
            for c in FINDING_CLIENTS.get(f.code, CLIENTS):
                why[c].append(f"{f.code}: {f.message}")
    algos = {_algo(p) for p in mods.values()}
    if algos & {"loha", "lokr"}:
        for c, reason in LYCORIS_TYPES.items():
            why[c].append(reason)
    if rep.dora_axis:
        from trainer.adapter.dora import compatibility

        for key, (ok, reason) in compatibility(rep.dora_axis).items():
            if key in DORA_CLIENT:
                (ok_note.__setitem__(DORA_CLIENT[key], f"DoRA: {reason}") if ok
                 else why[DORA_CLIENT[key]].append(f"DoRA: {reason}"))
    if _mixed_ranks(mods, table):
        why["diffusers"].append("per-module ranks: diffusers passes them through rank/alpha patterns that it "
                                "can mis-assign (wrong strength on some modules)")
    return [{"client": c, "ok": not why[c], "reason": "; ".join(why[c][:2]) if why[c] else ok_note[c]}
            for c in CLIENTS]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer check",
                                 description="Will A1111/Forge/ComfyUI/diffusers apply this LoRA as trained?")
    ap.add_argument("file")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--base", help="base model for names of non-standard UNets (e.g. tiny:sd1, a folder)")
    a = ap.parse_args(argv)
    base = None
    if a.base:
        from trainer.models.resolve import load_any

        base = load_any(a.base)
    path = Path(a.file)
    if not path.is_file():
        print(f"{path.name}: no such file", file=sys.stderr)
        return 2
    rep = check_file(path, base)
    print(json.dumps(rep.to_dict(), indent=2) if a.json else rep.text())
    return 1 if rep.verdict == "fail" else 0
