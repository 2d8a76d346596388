"""Every network type the trainer exports, applied the way each client applies it (trainer.formats.clients:
the clients' merge rules in the project's words; diffusers: the real diffusers loader), gives the delta
the run trained — or the check's per-client verdict says that client will not apply it, and why.

Two architectures run the same tests: the tiny SD1 base (real diffusers/transformers modules, fast) and,
marked slow, the SD1.5 architecture (build_random_base: the full-size UNet and CLIP-L text encoder from the
bundled configs, random fp32 weights, nothing downloaded), whose files are checked against the shipped
SD1.5 key table as a user's file is. A few optimizer steps on a random target make every factor
non-trivial; files are saved in fp16. Every adapted layer is compared, not a sample.
"Trained delta" = effective weight after training − effective weight at step 0 (for LoftQ that start is the
4-bit base plus its correction; for QLoRA the 4-bit base), "applied delta" = what the client computes on
the full-precision base − that base.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from trainer.adapter.network import build_network, effective_weight
from trainer.config import NetworkSection, TrainConfig
from trainer.formats.check import Report, check_file
from trainer.formats.clients import applied_weight
from trainer.formats.kohya_import import read_kohya
from trainer.formats.metadata import build_metadata
from trainer.formats.names import adapted_sites, components
from trainer.formats.save import save_adapter
from trainer.models.random_arch import build_random_base
from trainer.models.tiny import build_tiny

STEPS = 4  # AdaLoRA prunes from step 1 and fixes its masks at step 3
VARIANTS = {
    "lora": dict(rank=4, alpha=2, train_text_encoder=True),
    "locon": dict(rank=4, alpha=2, conv=True, conv_rank=2, conv_alpha=4),
    "dora-in": dict(rank=4, alpha=2, use_dora=True, dora_axis="in", conv=True, train_text_encoder=True),
    "dora-out": dict(rank=4, alpha=2, use_dora=True, dora_axis="out"),
    "loha": dict(algo="loha", rank=4, alpha=2, conv=True),
    "lokr": dict(algo="lokr", rank=4, alpha=2, conv=True),
    "adalora": dict(algo="adalora", rank=4, alpha=2, adalora_target_rank=2, train_text_encoder=True),
    "qlora": dict(rank=4, alpha=2, quantize_base="nf4", train_text_encoder=True),
    "loftq": dict(rank=4, alpha=2, quantize_base="nf4", loftq=True),
}
RULE_CLIENTS = ("ComfyUI", "A1111/Forge", "sd-scripts")  # trainer.formats.clients; diffusers runs for real


@dataclass(frozen=True)
class Arch:
    build: object  # () -> Base
    check_with_base: bool  # False: check the file as a user would, against the shipped key table
    reference: str  # the names the check compares the file's with
    steps: int  # optimizer steps (AdaLoRA always takes STEPS)
    linear_only: tuple[str, ...] = ()  # variants whose conv layers are left to the tiny run

    def steps_for(self, variant: str) -> int:
        return STEPS if variant == "adalora" else self.steps

    def network(self, variant: str) -> NetworkSection:
        settings = dict(VARIANTS[variant])
        if variant in self.linear_only:
            settings["conv"] = False
        return NetworkSection(**settings)


ARCHS = {
    "tiny": Arch(lambda: build_tiny("sd1"), True, "derived from the base model", STEPS),
    # 2 steps: B leaves zero at step 1, A moves at step 2 (a forward and backward take ~5 s CPU here)
    # LoHa and LoKr rebuild every adapted conv kernel in full at each forward: on SD1.5's convs that was
    # 4.5 min of the module's 11 (2 cores); DoRA's conv norms and the clients' merges of them over every
    # SD1.5 kernel were another 2.5. Their conv merge rules are checked on tiny, SD1.5's conv keys by LoCon
    "sd15": Arch(lambda: build_random_base("sd1"), False, "lora_keys/sd15.tsv", 2, ("loha", "lokr", "dora-in")),
}


def twin(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` on the same weight storage: new modules and Parameter objects (injection and
    quantisation replace them in the copy only), no data copied."""
    memo = {id(p): torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in model.parameters()}
    memo.update({id(b): b for b in model.buffers()})
    return copy.deepcopy(model, memo)


class SharedBase:
    """One base built once (SD1.5's random initialisation takes most of a minute); `make()` gives a fresh
    Base on its weights for each run, and the full-precision weights the clients add the files to are the
    same tensors. Training only wraps frozen weights, never writes them: `assert_unchanged` checks that."""

    def __init__(self, arch: Arch):
        self.arch = arch
        self.template = arch.build()
        self.parts = dict(components(self.template))
        self.sums = self._sums()

    def _sums(self) -> list[float]:
        models = [self.template.unet, self.template.vae, *self.template.text_encoders]
        return [float(t.sum(dtype=torch.float64)) for m in models for t in m.state_dict().values()]

    def make(self):
        t = self.template
        return dataclasses.replace(t, unet=twin(t.unet), vae=twin(t.vae),
                                   text_encoders=[twin(te) for te in t.text_encoders])

    def weight(self, site) -> torch.Tensor:
        return self.parts[site.component].get_submodule(site.path.replace(".base_layer", "")).weight.detach().float()

    def assert_unchanged(self) -> None:
        assert self._sums() == self.sums, "a run wrote into the frozen base weights"


def _forward_loss(base, g: torch.Generator) -> torch.Tensor:
    tok, te = base.tokenizers[0], base.text_encoders[0]
    ids = tok(["a zkq shape"], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    ctx = te(ids).last_hidden_state
    unet = base.unet
    x = torch.randn(1, unet.config.in_channels, 8, 8, generator=g)
    target = torch.randn(1, unet.config.out_channels, 8, 8, generator=g)
    return (unet(x, 500, encoder_hidden_states=ctx).sample - target).pow(2).mean()


def _adapter_state(layer) -> dict[str, torch.Tensor]:
    """The adapter's own tensors in a tuner layer (factors, DoRA magnitudes, AdaLoRA's E), not its base."""
    return {n: p.detach().clone() for n, p in layer.named_parameters() if not n.startswith("base_layer.")}


@torch.no_grad()
def _load_adapter_state(layer, state: dict[str, torch.Tensor]) -> None:
    for n, p in layer.named_parameters():
        if n in state:
            p.copy_(state[n])


def trained_delta(layer, start: dict[str, torch.Tensor]) -> torch.Tensor:
    """Effective weight now − effective weight with the step-0 adapter tensors put back (the frozen base
    is the same in both), without keeping a copy of every start weight (SD1.5 LoCon: 3 GB)."""
    end, now = effective_weight(layer), _adapter_state(layer)
    _load_adapter_state(layer, start)
    delta = end - effective_weight(layer)
    _load_adapter_state(layer, now)
    return delta


def max_abs(t: torch.Tensor) -> float:
    lo, hi = torch.aminmax(t)  # one pass, no |t| temporary (SD1.5 convs: 59 MB each); 10x vector_norm(inf)
    return max(-float(lo), float(hi))


def fp16_tolerance(delta: torch.Tensor, w: torch.Tensor, dora: bool) -> float:
    # fp16 keeps 11 significant bits (relative 4.9e-4): a DoRA weight carries that error on all of W
    return 4e-3 * max_abs(delta) + (2e-3 * max_abs(w) if dora else 0.0) + 1e-6


def excess(applied: torch.Tensor, w: torch.Tensor, delta: torch.Tensor, tol: float) -> float:
    """max |(applied − w) − delta| in units of tol."""
    return max_abs((applied - w).sub_(delta)) / tol


@dataclass
class Export:
    path: Path
    report: Report
    # per client (and "diffusers"): the worst |applied − trained delta| / fp16 tolerance over every module
    # of the file; inf where the client leaves a module out
    excess: dict[str, float]
    diffusers_refused: str  # the ValueError diffusers' loader raised, if it did
    unwritten: int  # adapted layers the file leaves out (AdaLoRA pruned every rank)
    unwritten_delta: float  # the largest trained change among them (must be none)


def train_and_export(folder: Path, variant: str, shared: SharedBase) -> Export:
    torch.manual_seed(0)
    base = shared.make()
    net_cfg = shared.arch.network(variant)
    steps = shared.arch.steps_for(variant)
    net = build_network(base, net_cfg, total_steps=steps)
    sites = adapted_sites(base)
    start = {name: _adapter_state(site.module) for name, site in sites.items()}
    opt = torch.optim.Adam(net.all_params(), lr=3e-2)
    g = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        _forward_loss(base, g).backward()
        opt.step()
        net.after_step(step)
        opt.zero_grad(set_to_none=True)
    cfg = TrainConfig()
    cfg.network = net_cfg
    meta = build_metadata(cfg, {"family": "sd1", "base_name": "v1-5-pruned.safetensors"}, minimal=True)
    path = folder / f"{variant}.safetensors"
    save_adapter(path, base, net, meta, "fp16")
    rep = check_file(path, base=shared.make() if shared.arch.check_with_base else None)

    fresh = shared.make()  # the real diffusers loader on a base without adapters
    refused = ""
    try:
        fresh.pipeline().load_lora_weights(str(path))
    except ValueError as e:
        refused = str(e) or type(e).__name__
    loaded = adapted_sites(fresh) if not refused else {}

    kf = read_kohya(path)
    worst = {c: 0.0 for c in (*RULE_CLIENTS, "diffusers")}
    for name, site in sites.items():
        if name not in kf.modules:
            continue
        mw, delta, w = kf.modules[name], trained_delta(site.module, start[name]), shared.weight(site)
        tol = fp16_tolerance(delta, w, False)
        tol_rules = fp16_tolerance(delta, w, True) if "dora_scale" in mw.tensors else tol
        for client in RULE_CLIENTS:
            got = applied_weight(client, mw.tensors, mw.alpha, w)
            worst[client] = max(worst[client], math.inf if got is None else excess(got, w, delta, tol_rules))
        layer = loaded.get(name)  # None: diffusers refused the file or dropped this module
        worst["diffusers"] = max(worst["diffusers"], math.inf if layer is None else
                                 excess(effective_weight(layer.module, next(iter(layer.module.lora_A))), w, delta, tol))
    left_out = [name for name in sites if name not in kf.modules]
    unwritten_delta = max((max_abs(trained_delta(sites[n].module, start[n])) for n in left_out), default=0.0)
    return Export(path, rep, worst, refused, len(left_out), unwritten_delta)


class _Exports(dict):
    """Each variant trained and exported once, when a test first needs it (so each test's time covers
    at most the variants it uses)."""

    def __init__(self, factory, shared: SharedBase):
        super().__init__()
        self.factory, self.shared = factory, shared

    def __missing__(self, variant):
        self[variant] = train_and_export(self.factory.mktemp(variant), variant, self.shared)
        return self[variant]


@pytest.fixture(scope="module", params=["tiny", pytest.param("sd15", marks=pytest.mark.slow)])
def exports(request, tmp_path_factory):
    exp = _Exports(tmp_path_factory, SharedBase(ARCHS[request.param]))
    exp.arch = request.param
    return exp


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_client_applies_the_trained_delta_or_the_check_says_why_not(exports, variant):
    ex = exports[variant]
    rep = ex.report
    assert not [f for f in rep.findings if f.severity == "error"], rep.text()
    assert rep.reference == ARCHS[exports.arch].reference, rep.text()
    verdicts = {c["client"]: c for c in rep.clients}
    kf = read_kohya(ex.path)
    assert kf.modules, "empty file"
    for client in RULE_CLIENTS:
        ok = ex.excess[client] <= 1.0
        if verdicts[client]["ok"]:
            assert ok, f"{variant}: check says {client} applies it, but the delta is off ({ex.excess[client]:.1f}× tolerance)"
        else:
            assert len(verdicts[client]["reason"]) > 15
            assert not ok, f"{variant}: {client} applies it exactly, but the check says ✗: {verdicts[client]['reason']}"
    # modules without a gradient path were not written: nothing all-zero in the file
    for name, mw in kf.modules.items():
        assert any(t.abs().max() > 0 for k, t in mw.tensors.items() if k != "dora_scale"), name
    # and a layer the file leaves out had trained nothing
    assert ex.unwritten_delta == 0.0, f"{variant}: {ex.unwritten} layers not written, one trained {ex.unwritten_delta}"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_real_diffusers_applies_the_trained_delta_or_the_check_says_why_not(exports, variant):
    ex = exports[variant]
    ok = {c["client"]: c["ok"] for c in ex.report.clients}["diffusers"]
    if variant in ("loha", "lokr"):
        assert not ok and ex.diffusers_refused
        return
    assert not ex.diffusers_refused, ex.diffusers_refused
    worst = ex.excess["diffusers"]
    if ok:
        assert worst <= 1.0, f"{variant}: diffusers applies it {worst:.1f}× off the tolerance"
    else:
        assert worst > 1.0, f"{variant}: diffusers applies it exactly, but the check says ✗"


def test_adalora_and_loftq_files_have_one_rank_and_alpha_and_say_so(exports):
    for variant in ("adalora", "loftq"):
        ex = exports[variant]
        kf = read_kohya(ex.path)
        pairs = {(mw.tensors["lora_down.weight"].shape[0], mw.alpha) for mw in kf.modules.values()}
        assert len(pairs) == 1, f"{variant}: {pairs}"
        (rank, alpha), = pairs
        assert kf.metadata["ss_network_dim"] == str(rank)
        assert float(kf.metadata["ss_network_alpha"]) == pytest.approx(alpha, rel=1e-5)
        assert not [f for f in ex.report.findings if f.code == "alpha_vs_metadata"], ex.report.text()
    # LoftQ writes the trained change exactly as rank 2r (its correction is subtracted)
    assert kf.metadata["ss_network_dim"] == str(2 * VARIANTS["loftq"]["rank"])


def test_lycoris_types_are_refused_by_sd_scripts_and_diffusers_in_the_verdict(exports):
    for variant in ("loha", "lokr"):
        rep = exports[variant].report
        v = {c["client"]: c for c in rep.clients}
        assert v["ComfyUI"]["ok"] and v["A1111/Forge"]["ok"], rep.text()
        assert not v["sd-scripts"]["ok"] and "LyCORIS" in v["sd-scripts"]["reason"]
        assert not v["diffusers"]["ok"] and "LoHa/LoKr" in v["diffusers"]["reason"]
        assert rep.verdict == "warn"


def test_default_dora_axis_is_applied_exactly_by_comfyui_and_a1111(exports):
    assert NetworkSection().dora_axis == "in"
    v = {c["client"]: c["ok"] for c in exports["dora-in"].report.clients}
    assert v["ComfyUI"] and v["A1111/Forge"]
    v_out = {c["client"]: c for c in exports["dora-out"].report.clients}
    assert not v_out["ComfyUI"]["ok"] and not v_out["A1111/Forge"]["ok"]


def test_the_runs_left_the_shared_base_weights_as_built(exports):
    """The runs share one base's weight tensors, and the clients add the files to those: training (peft
    wrapping, NF4 quantisation, LoftQ, DoRA) must never have written into them. Runs after the others."""
    for variant in VARIANTS:
        exports[variant]
    exports.shared.assert_unchanged()
