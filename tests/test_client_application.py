"""Every network type the trainer exports, applied the way each client applies it (trainer.formats.clients:
the clients' merge rules in the project's words; diffusers: the real diffusers loader), gives the delta
the run trained — or the check's per-client verdict says that client will not apply it, and why.

Tiny SD1 base (real diffusers/transformers modules), a few optimizer steps on a random target so every
factor is non-trivial, files saved in fp16. "Trained delta" = effective weight after training − effective
weight at step 0 (for LoftQ that start is the 4-bit base plus its correction; for QLoRA the 4-bit base),
"applied delta" = what the client computes on the full-precision base − that base.
"""
from __future__ import annotations

import pytest
import torch

from trainer.adapter.network import build_network, effective_weight
from trainer.config import NetworkSection, TrainConfig
from trainer.formats.check import check_file
from trainer.formats.clients import applied_weight
from trainer.formats.kohya_import import read_kohya
from trainer.formats.metadata import build_metadata
from trainer.formats.names import adapted_sites
from trainer.formats.save import save_adapter
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


def _forward_loss(base, g: torch.Generator) -> torch.Tensor:
    tok, te = base.tokenizers[0], base.text_encoders[0]
    ids = tok(["a zkq shape"], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    ctx = te(ids).last_hidden_state
    unet = base.unet
    x = torch.randn(1, unet.config.in_channels, 8, 8, generator=g)
    target = torch.randn(1, unet.config.out_channels, 8, 8, generator=g)
    return (unet(x, 500, encoder_hidden_states=ctx).sample - target).pow(2).mean()


def _effective(base) -> dict[str, torch.Tensor]:
    return {name: effective_weight(site.module).clone() for name, site in adapted_sites(base).items()}


def train_and_export(tmp_path, variant: str):
    """(file, trained deltas by kohya name, full-precision base weights by kohya name, check report)."""
    torch.manual_seed(0)
    base = build_tiny("sd1")
    net_cfg = NetworkSection(**VARIANTS[variant])
    net = build_network(base, net_cfg, total_steps=STEPS)
    start = _effective(base)
    opt = torch.optim.Adam(net.all_params(), lr=3e-2)
    g = torch.Generator().manual_seed(1)
    for step in range(1, STEPS + 1):
        _forward_loss(base, g).backward()
        opt.step()
        net.after_step(step)
        opt.zero_grad(set_to_none=True)
    trained = {n: w - start[n] for n, w in _effective(base).items()}
    cfg = TrainConfig()
    cfg.network = net_cfg
    meta = build_metadata(cfg, {"family": "sd1", "base_name": "v1-5-pruned.safetensors"}, minimal=True)
    path = tmp_path / f"{variant}.safetensors"
    save_adapter(path, base, net, meta, "fp16")
    fp = build_tiny("sd1")  # the same seed: the full-precision weights the clients add the file to
    weights = {}
    comps = {"unet": fp.unet, "te0": fp.text_encoders[0]}
    for name, site in adapted_sites(base).items():
        path_in = site.path.replace(".base_layer", "")
        weights[name] = comps[site.component].get_submodule(path_in).weight.detach().float()
    return path, trained, weights, check_file(path, base=build_tiny("sd1"))


def fp16_tolerance(delta: torch.Tensor, w: torch.Tensor, dora: bool) -> float:
    # fp16 keeps 11 significant bits (relative 4.9e-4): a DoRA weight carries that error on all of W
    return 4e-3 * float(delta.abs().max()) + (2e-3 * float(w.abs().max()) if dora else 0.0) + 1e-6


class _Exports(dict):
    """Each variant trained and exported once, when a test first needs it (so each test's time covers
    at most the variants it uses)."""

    def __init__(self, factory):
        super().__init__()
        self.factory = factory

    def __missing__(self, variant):
        self[variant] = train_and_export(self.factory.mktemp(variant), variant)
        return self[variant]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return _Exports(tmp_path_factory)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_client_applies_the_trained_delta_or_the_check_says_why_not(exports, variant):
    path, trained, weights, rep = exports[variant]
    assert not [f for f in rep.findings if f.severity == "error"], rep.text()
    verdicts = {c["client"]: c for c in rep.clients}
    kf = read_kohya(path)
    assert kf.modules, "empty file"
    for client in ("ComfyUI", "A1111/Forge", "sd-scripts"):
        worst_excess, matched = 0.0, True
        for name, mw in kf.modules.items():
            w = weights[name]
            got = applied_weight(client, mw.tensors, mw.alpha, w)
            if got is None:
                matched = False
                continue
            err = float((got - w - trained[name]).abs().max())
            tol = fp16_tolerance(trained[name], w, "dora_scale" in mw.tensors)
            worst_excess = max(worst_excess, err / tol)
        ok = matched and worst_excess <= 1.0
        if verdicts[client]["ok"]:
            assert ok, f"{variant}: check says {client} applies it, but the delta is off ({worst_excess:.1f}× tolerance)"
        else:
            assert len(verdicts[client]["reason"]) > 15
            assert not ok, f"{variant}: {client} applies it exactly, but the check says ✗: {verdicts[client]['reason']}"
    # modules without a gradient path were not written: nothing all-zero in the file
    for name, mw in kf.modules.items():
        assert any(t.abs().max() > 0 for k, t in mw.tensors.items() if k != "dora_scale"), name


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_real_diffusers_applies_the_trained_delta_or_the_check_says_why_not(exports, variant):
    path, trained, weights, rep = exports[variant]
    ok = {c["client"]: c["ok"] for c in rep.clients}["diffusers"]
    fresh = build_tiny("sd1")
    pipe = fresh.pipeline()
    if variant in ("loha", "lokr"):
        assert not ok
        with pytest.raises(ValueError):
            pipe.load_lora_weights(str(path))
        return
    pipe.load_lora_weights(str(path))
    comps = {"unet": pipe.unet, "te0": pipe.text_encoder}
    worst = 0.0
    kf = read_kohya(path)
    trained_base = {n: s for n, s in adapted_sites(fresh).items()}
    for name in kf.modules:
        site = trained_base[name]
        layer = comps[site.component].get_submodule(site.path)
        adapter = next(iter(layer.lora_A))
        applied = effective_weight(layer, adapter) - weights[name]
        tol = fp16_tolerance(trained[name], weights[name], False)
        worst = max(worst, float((applied - trained[name]).abs().max()) / tol)
    if ok:
        assert worst <= 1.0, f"{variant}: diffusers applies it {worst:.1f}× off the tolerance"
    else:
        assert worst > 1.0, f"{variant}: diffusers applies it exactly, but the check says ✗"


def test_adalora_and_loftq_files_have_one_rank_and_alpha_and_say_so(exports):
    for variant in ("adalora", "loftq"):
        path, _, _, rep = exports[variant]
        kf = read_kohya(path)
        pairs = {(mw.tensors["lora_down.weight"].shape[0], mw.alpha) for mw in kf.modules.values()}
        assert len(pairs) == 1, f"{variant}: {pairs}"
        (rank, alpha), = pairs
        assert kf.metadata["ss_network_dim"] == str(rank)
        assert float(kf.metadata["ss_network_alpha"]) == pytest.approx(alpha, rel=1e-5)
        assert not [f for f in rep.findings if f.code == "alpha_vs_metadata"], rep.text()
    # LoftQ writes the trained change exactly as rank 2r (its correction is subtracted)
    assert kf.metadata["ss_network_dim"] == str(2 * VARIANTS["loftq"]["rank"])


def test_lycoris_types_are_refused_by_sd_scripts_and_diffusers_in_the_verdict(exports):
    for variant in ("loha", "lokr"):
        rep = exports[variant][3]
        v = {c["client"]: c for c in rep.clients}
        assert v["ComfyUI"]["ok"] and v["A1111/Forge"]["ok"], rep.text()
        assert not v["sd-scripts"]["ok"] and "LyCORIS" in v["sd-scripts"]["reason"]
        assert not v["diffusers"]["ok"] and "LoHa/LoKr" in v["diffusers"]["reason"]
        assert rep.verdict == "warn"


def test_default_dora_axis_is_applied_exactly_by_comfyui_and_a1111(exports):
    assert NetworkSection().dora_axis == "in"
    v = {c["client"]: c["ok"] for c in exports["dora-in"][3].clients}
    assert v["ComfyUI"] and v["A1111/Forge"]
    v_out = {c["client"]: c for c in exports["dora-out"][3].clients}
    assert not v_out["ComfyUI"]["ok"] and not v_out["A1111/Forge"]["ok"]
