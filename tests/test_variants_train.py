"""Every LoRA-family variant through the real trainer (tiny SD1, CPU): a few steps with finite loss, an
exported fp32 file that `trainer check` accepts, that loads back to the trained model's outputs, and
whose merged weights (computed from the file the way the clients do) equal the trained modules'
effective weights.

Tolerances (fp32 file, fp32 model): merged weights 2e-5 absolute; UNet output 1e-4 absolute (outputs
are O(1)). QLoRA: the file is applied to the same NF4 base (bit-identical quantisation), since the
trained model multiplies by the 4-bit weights; against the full-precision base the difference is the
quantisation error, measured and printed. LoftQ: the file holds the change relative to the
full-precision base, so fp base + file must come closer to the trained model than the fp base to the
4-bit base does.
"""
import math

import pytest
import torch

from tests.helpers import events, make_dataset, write_config
from trainer.config import load_config
from trainer.adapter.dora import kohya_delta, merge_a1111, merge_comfyui, merge_lycoris
from trainer.formats.check import check_file
from trainer.formats.kohya_import import apply_kohya, read_kohya
from trainer.formats.names import adapted_sites
from tests.probe import unet_output
from trainer.train.loop import EXIT_OK, Trainer
from trainer.models.tiny import build_tiny
from trainer.adapter.network import effective_weight
from trainer.adapter.quantize import quantize_nf4

STEPS = 6
VARIANTS = {
    "locon": {"network.conv": True, "network.conv_rank": 3, "network.conv_alpha": 6.0},
    "dora-out": {"network.use_dora": True, "network.dora_axis": "out", "network.train_text_encoder": True},
    "dora-in": {"network.use_dora": True, "network.dora_axis": "in", "network.conv": True},
    "loha": {"network.algo": "loha", "network.conv": True},
    "lokr": {"network.algo": "lokr", "network.conv": True},
    "adalora": {"network.algo": "adalora", "network.rank": 4, "network.adalora_target_rank": 2,
                "schedule.max_train_steps": 12},
    "qlora": {"network.quantize_base": "nf4", "network.train_text_encoder": True},
    "qlora-loftq": {"network.quantize_base": "nf4", "network.loftq": True},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("variants") / "data", n=4)


def train(tmp_path, data, sets: dict) -> Trainer:
    # a preview prompt keeps the frozen text encoder and VAE in the trainer after the run (a run without
    # previews frees them once cached, trainer/train/frozen.py): the checks below run the trained base itself.
    # Only the finished run's one preview is drawn, in 2 denoising steps.
    base_sets = {"dataset.path": str(data), "schedule.max_train_steps": STEPS, "saving.precision": "fp32",
                 "sampling.prompts": ["a photo of a zkq cat"], "sampling.at_start": False,
                 "sampling.every_n_steps": 0, "sampling.steps": 2, "optimizer.lr": 1e-2,
                 "saving.output_name": "variant"}
    cfg_path = write_config(tmp_path / "run", **{**base_sets, **sets})
    trainer = Trainer(load_config(cfg_path), tmp_path / "run", quiet=True)
    assert trainer.run() == EXIT_OK, [e for e in events(tmp_path / "run") if e["type"] in ("error", "warning")]
    return trainer


def fresh_base(quantized: bool):
    base = build_tiny("sd1")
    if quantized:
        for m in [base.unet, *base.text_encoders]:
            quantize_nf4(m, "cpu")
    return base


def file_weights(trainer, path, client_merge):
    """(kohya name, weight the client computes from the file on the full-precision W, trained weight)."""
    kf = read_kohya(path)
    fp = adapted_sites(trainer.base)
    plain = build_tiny("sd1")
    plain_w = {}
    for comp, model in [("unet", plain.unet)] + [(f"te{i}", te) for i, te in enumerate(plain.text_encoders)]:
        for name, mod in model.named_modules():
            if hasattr(mod, "weight") and isinstance(mod.weight, torch.Tensor):
                plain_w[(comp, name)] = mod.weight.detach().float()
    for name, mw in kf.modules.items():
        site = fp[name]
        w = plain_w[(site.component, site.path.replace(".base_layer", ""))]
        delta = kohya_delta(mw.tensors, mw.alpha, w.shape)
        ds = mw.tensors.get("dora_scale")
        merged = w + delta if ds is None else client_merge(w, delta, ds.float())
        yield name, merged, effective_weight(site.module)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_trains_exports_and_loads_back(variant, tmp_path, data):
    sets = VARIANTS[variant]
    trainer = train(tmp_path, data, sets)
    ev = events(tmp_path / "run")
    losses = [e["loss"] for e in ev if e["type"] == "step"]
    steps = sets.get("schedule.max_train_steps", STEPS)
    assert len(losses) == steps and all(math.isfinite(x) for x in losses)

    files = sorted((tmp_path / "run" / "output").glob("*.safetensors"))
    assert len(files) == 1
    path = files[0]
    quantized = "network.quantize_base" in sets
    loftq = "network.loftq" in sets
    if quantized:  # the tiny model's narrow layers stay in full precision, and the run says how many
        kept = [e for e in ev if e["type"] == "warning" and e.get("kept_linear")]
        assert len(kept) == 1 and kept[0]["kept_linear"] == trainer.network.quant.kept_linear > 0, kept

    # `trainer check` against the names and shapes this base expects
    rep = check_file(path, base=build_tiny("sd1"))
    assert rep.verdict in ("pass", "warn"), rep.text()
    assert not [f for f in rep.findings if f.severity == "error"]

    # merged weights from the file, the way LyCORIS/peft (row DoRA) or A1111 (column DoRA) apply it
    merge = merge_a1111 if sets.get("network.dora_axis") == "in" else merge_lycoris
    worst, quant_err, n = 0.0, 0.0, 0
    for name, merged, eff in file_weights(trainer, path, merge):
        err = (merged - eff).abs().max().item()
        if quantized:
            quant_err = max(quant_err, (merged - eff).norm().item() / eff.norm().item())
        else:
            worst = max(worst, err)
        n += 1
    assert n > 0
    if quantized:
        print(f"{variant}: fp W + file vs trained 4-bit module, worst relative weight error {quant_err:.4f}")
    else:
        assert worst < 2e-5, f"{variant}: merged weight differs from the trained one by {worst}"

    # the file loaded back into a fresh identical base gives the trained model's output
    trainer.base.unet.eval()
    trained = unet_output(trainer.base)
    if loftq:
        fp_loaded = fresh_base(False)
        apply_kohya(fp_loaded, path)
        with_file = (unet_output(fp_loaded) - trained).norm() / trained.norm()
        q_only, fp_only = fresh_base(True), fresh_base(False)
        quant_gap = (unet_output(fp_only) - unet_output(q_only)).norm() / unet_output(q_only).norm()
        print(f"{variant}: fp base + file vs trained {with_file:.4f}; fp base vs 4-bit base {quant_gap:.4f}")
        assert with_file < quant_gap
    else:
        loaded = fresh_base(quantized)
        rep_import = apply_kohya(loaded, path)
        assert not rep_import.not_in_model
        diff = (unet_output(loaded) - trained).abs().max().item()
        assert diff < 1e-4, f"{variant}: reloaded output differs by {diff}"


def test_adalora_export_has_unequal_ranks_within_budget(tmp_path, data):
    sets = VARIANTS["adalora"]
    trainer = train(tmp_path, data, sets)
    path = next((tmp_path / "run" / "output").glob("*.safetensors"))
    kf = read_kohya(path)
    n_modules = len(adapted_sites(trainer.base))
    # the file pads every module to one rank (diffusers reads mixed ranks wrongly): count the live rows
    ranks = {name: int((mw.tensors["lora_down.weight"].reshape(mw.tensors["lora_down.weight"].shape[0], -1)
                        .abs().sum(1) > 0).sum()) for name, mw in kf.modules.items()}
    ranks.update({name: 0 for name in adapted_sites(trainer.base) if name not in ranks})  # pruned to nothing
    budget = sets["network.adalora_target_rank"] * n_modules
    print(f"adalora: {n_modules} modules, ranks {sorted(ranks.values())}, total {sum(ranks.values())} ≤ {budget}")
    assert len(set(ranks.values())) >= 2
    assert sum(ranks.values()) <= budget
    assert max(ranks.values()) <= sets["network.rank"]


@pytest.mark.parametrize("axis", ["out", "in"])
def test_dora_file_as_each_client_applies_it(axis, tmp_path, data):
    """LyCORIS/peft rules for [out,1], A1111 and ComfyUI for [1,in] reproduce the trained weights;
    ComfyUI's row rule (norm of the base W) and A1111 on an [out,1] file do not."""
    sets = {"network.use_dora": True, "network.dora_axis": axis, "optimizer.lr": 3e-2}
    trainer = train(tmp_path, data, sets)
    path = next((tmp_path / "run" / "output").glob("*.safetensors"))
    rules = {"lycoris": merge_lycoris, "a1111": merge_a1111, "comfyui": merge_comfyui}
    worst = {}
    for client, rule in rules.items():
        worst[client] = max((merged - eff).abs().max().item() for _, merged, eff in file_weights(trainer, path, rule))
    print(f"DoRA axis {axis}: worst |client W' − trained W'| {worst}")
    from trainer.adapter.dora import compatibility

    for client, (ok, _) in compatibility(axis).items():
        if client in worst:
            assert (worst[client] < 2e-5) == ok, (client, worst[client])
