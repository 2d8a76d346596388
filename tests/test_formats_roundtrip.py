"""Export → diffusers load_lora_weights / our import on a fresh identical base gives the adapted
model's outputs; a kohya file written by hand to the spec loads the same in diffusers and here."""
import pytest
import torch
from safetensors.torch import save_file

from trainer.config import NetworkSection
from trainer.formats.kohya_export import kohya_tensors
from trainer.formats.kohya_import import KohyaImportError, apply_kohya, load_kohya_into
from tests.probe import text_states, unet_output
from trainer.formats.save import save_tensors
from trainer.models.tiny import build_tiny
from trainer.adapter.network import build_network, set_adapter_scale


def adapted(family, **kw):
    base = build_tiny(family)
    cfg = dict(rank=4, alpha=2, conv=True, conv_rank=3, conv_alpha=5, train_text_encoder=True)
    cfg.update(kw)
    net = build_network(base, NetworkSection(**cfg))
    perturb(base)
    return base, net


def perturb(base, scale=0.1):
    """B (and LoHa/LoKr's zero factor) starts at zero: make the adapter non-zero; nudge DoRA's
    magnitude off the base norms."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for model in [base.unet, *base.text_encoders]:
            for name, p in model.named_parameters():
                if not p.requires_grad:
                    continue
                if "magnitude" in name:
                    p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g))
                elif not p.any():
                    p.add_(torch.randn(p.shape, generator=g) * scale)


def outputs(base):
    return unet_output(base), text_states(base)


def max_diff(a, b):
    ua, ta = a
    ub, tb = b
    return max([(ua - ub).abs().max().item()] + [(x - y).abs().max().item() for x, y in zip(ta, tb)])


@pytest.mark.parametrize("family", ["sd1", "sd2-v", "sdxl"])
def test_export_loads_in_diffusers_and_ours(family, tmp_path):
    base, _ = adapted(family)
    ref = outputs(base)
    plain = outputs(build_tiny(family))
    assert max_diff(ref, plain) > 1e-2  # the adapter changes both the UNet and the text encoders
    assert all((a - b).abs().max() > 1e-2 for a, b in zip(ref[1], plain[1]))
    sd = kohya_tensors(base)
    for dtype, tol in (("fp32", 1e-5), ("fp16", 1e-3)):
        path = tmp_path / f"{family}-{dtype}.safetensors"
        save_tensors(path, sd, {"ss_network_module": "networks.lora"}, dtype)

        fresh = build_tiny(family)
        fresh.pipeline().load_lora_weights(str(path))
        got = outputs(fresh)
        assert (got[0] - ref[0]).abs().max().item() <= tol, dtype
        for a, b in zip(got[1], ref[1]):  # text-encoder LoRA applied by diffusers too
            assert (a - b).abs().max().item() <= tol, dtype

        ours = build_tiny(family)
        apply_kohya(ours, path)
        assert max_diff(outputs(ours), ref) <= tol, dtype

    # export → import into a network built like the first → identical tensors
    again, _ = adapted(family)
    with torch.no_grad():
        for p in [p for m in [again.unet, *again.text_encoders] for n, p in m.named_parameters() if "lora_" in n]:
            p.zero_()
    rep = load_kohya_into(again, tmp_path / f"{family}-fp32.safetensors")
    assert not rep.not_in_model and not rep.not_in_file and not rep.rank_changed
    sd2 = kohya_tensors(again)
    assert sd2.keys() == sd.keys()
    for k in sd:
        assert torch.equal(sd2[k], sd[k]), k


def test_import_takes_the_files_ranks_and_alphas_and_keeps_parameter_objects(tmp_path):
    src, _ = adapted("sd1", rank=6, alpha=1.5, conv_rank=2, conv_alpha=7)
    path = tmp_path / "r6.safetensors"
    save_tensors(path, kohya_tensors(src), {}, "fp32")
    dst = build_tiny("sd1")
    net = build_network(dst, NetworkSection(rank=4, alpha=4, conv=True, train_text_encoder=True))
    ids = [id(p) for p in net.all_params()]
    rep = load_kohya_into(dst, path)
    assert rep.rank_changed and not rep.not_in_model
    assert [id(p) for p in net.all_params()] == ids  # an optimizer built afterwards sees these
    assert max_diff(outputs(dst), outputs(src)) <= 1e-5
    # the strength of a preview scales from the file's scale
    set_adapter_scale(dst.unet, 0.0)
    set_adapter_scale(dst.text_encoders[0], 0.0)
    assert max_diff(outputs(dst), outputs(build_tiny("sd1"))) <= 1e-5


def test_import_refuses_a_file_for_another_family(tmp_path):
    src, _ = adapted("sdxl", conv=False)
    path = tmp_path / "xl.safetensors"
    save_tensors(path, kohya_tensors(src), {}, "fp32")
    dst = build_tiny("sd1")
    build_network(dst, NetworkSection(rank=4, alpha=4))
    with pytest.raises(KohyaImportError, match="xl.safetensors"):
        load_kohya_into(dst, path)


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_lycoris_export_import_round_trip(algo, tmp_path):
    base, _ = adapted("sd1", algo=algo, rank=4, alpha=3, conv=True, conv_rank=4, conv_alpha=2)
    sd = kohya_tensors(base)
    keys = {k.split(".", 1)[1] for k in sd}
    assert ("hada_w1_a" in keys) if algo == "loha" else any(k.startswith("lokr_w") for k in keys)
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in sd)
    path = tmp_path / f"{algo}.safetensors"
    save_tensors(path, sd, {}, "fp32")
    fresh = build_tiny("sd1")
    apply_kohya(fresh, path)
    assert max_diff(outputs(fresh), outputs(base)) <= 1e-5
    again, _ = adapted("sd1", algo=algo, rank=4, alpha=3, conv=True, conv_rank=4, conv_alpha=2)
    load_kohya_into(again, path)
    assert all(torch.equal(kohya_tensors(again)[k], sd[k]) for k in sd)


def test_dora_export_has_per_row_scale_and_round_trips(tmp_path):
    base, _ = adapted("sd1", use_dora=True, dora_axis="out", conv=False)
    sd = kohya_tensors(base)
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    out_dim = sd[f"{q}.lora_up.weight"].shape[0]
    assert sd[f"{q}.dora_scale"].shape == (out_dim, 1)
    assert sd["lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale"].shape[1:] == (1, 1, 1)
    path = tmp_path / "dora.safetensors"
    save_tensors(path, sd, {}, "fp32")
    fresh = build_tiny("sd1")
    apply_kohya(fresh, path)
    assert max_diff(outputs(fresh), outputs(base)) <= 1e-5


# ---- a file written by hand to the format in docs/adapter-format.md, not by our exporter

SDXL_BY_HAND = {  # kohya SGM name → diffusers module path in the tiny SDXL UNet
    "input_blocks_4_1_transformer_blocks_1_attn2_to_k": "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k",
    "input_blocks_5_1_proj_in": "down_blocks.1.attentions.1.proj_in",
    "middle_block_1_transformer_blocks_0_ff_net_0_proj": "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "output_blocks_2_1_transformer_blocks_1_attn1_to_out_0":
        "up_blocks.0.attentions.2.transformer_blocks.1.attn1.to_out.0",
    "output_blocks_0_1_proj_out": "up_blocks.0.attentions.0.proj_out",
}


def _module(model, path):
    return model.get_submodule(path)


def hand_written_sd1(base, rank=3, alpha=1.5):
    g = torch.Generator().manual_seed(11)
    sd = {}
    for path, mod in base.unet.named_modules():
        if path.endswith(("attn1.to_q", "attn2.to_v", "proj_in", "ff.net.2")):
            name = "lora_unet_" + path.replace(".", "_")
            w = mod.weight
            k = w.shape[2:] if w.dim() == 4 else ()
            sd[f"{name}.lora_down.weight"] = torch.randn(rank, w.shape[1], *k, generator=g) * 0.3
            sd[f"{name}.lora_up.weight"] = torch.randn(w.shape[0], rank, *[1] * len(k), generator=g) * 0.3
            sd[f"{name}.alpha"] = torch.tensor(alpha)
    for path, mod in base.text_encoders[0].named_modules():
        # diffusers only maps text-encoder keys when an out_proj is among them (it detects the key
        # style by "to_out_lora"), so a hand-written file that diffusers can compare with has one
        if path.endswith(("self_attn.k_proj", "self_attn.out_proj", "mlp.fc1")):
            tail = path[path.index("encoder.layers"):]
            name = "lora_te_text_model_" + tail.replace(".", "_")
            sd[f"{name}.lora_down.weight"] = torch.randn(rank, mod.weight.shape[1], generator=g) * 0.3
            sd[f"{name}.lora_up.weight"] = torch.randn(mod.weight.shape[0], rank, generator=g) * 0.3
            sd[f"{name}.alpha"] = torch.tensor(alpha)
    return sd


def hand_written_sdxl(base, rank=2, alpha=3.0):
    g = torch.Generator().manual_seed(12)
    sd = {}
    for sgm, path in SDXL_BY_HAND.items():
        w = _module(base.unet, path).weight
        sd[f"lora_unet_{sgm}.lora_down.weight"] = torch.randn(rank, w.shape[1], generator=g) * 0.3
        sd[f"lora_unet_{sgm}.lora_up.weight"] = torch.randn(w.shape[0], rank, generator=g) * 0.3
        sd[f"lora_unet_{sgm}.alpha"] = torch.tensor(alpha)
    te2 = base.text_encoders[1]
    w = _module(te2, "text_model.encoder.layers.1.mlp.fc1").weight
    sd["lora_te2_text_model_encoder_layers_1_mlp_fc1.lora_down.weight"] = torch.randn(rank, w.shape[1], generator=g)
    sd["lora_te2_text_model_encoder_layers_1_mlp_fc1.lora_up.weight"] = torch.randn(w.shape[0], rank, generator=g)
    sd["lora_te2_text_model_encoder_layers_1_mlp_fc1.alpha"] = torch.tensor(alpha)
    return sd


@pytest.mark.parametrize("family,writer", [("sd1", hand_written_sd1), ("sdxl", hand_written_sdxl)])
def test_hand_written_kohya_file_imports_like_diffusers(family, writer, tmp_path):
    path = tmp_path / "civitai_style.safetensors"
    save_file(writer(build_tiny(family)), str(path), metadata={"ss_network_module": "networks.lora"})
    plain = outputs(build_tiny(family))

    theirs = build_tiny(family)
    theirs.pipeline().load_lora_weights(str(path))
    ref = outputs(theirs)
    assert max_diff(ref, plain) > 1e-3

    ours = build_tiny(family)
    rep = apply_kohya(ours, path)
    assert not rep.not_in_model
    assert max_diff(outputs(ours), ref) <= 1e-5

    # and into an injected training network (continue training from a Civitai LoRA)
    trained = build_tiny(family)
    build_network(trained, NetworkSection(rank=8, alpha=8, train_text_encoder=True))
    rep = load_kohya_into(trained, path)
    assert rep.loaded and rep.not_in_file  # the file covers fewer modules: the rest stay at zero
    assert max_diff(outputs(trained), ref) <= 1e-5


def test_adalora_exports_its_pruned_per_module_ranks(tmp_path):
    from peft import AdaLoraConfig, inject_adapter_in_model

    from trainer.adapter.network import UNET_ATTENTION

    base = build_tiny("sd1")
    inject_adapter_in_model(AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8, target_modules=UNET_ATTENTION,
                                          total_step=10), base.unet, adapter_name="default")
    g = torch.Generator().manual_seed(3)
    kept = {}
    with torch.no_grad():
        for i, (name, m) in enumerate((n, m) for n, m in base.unet.named_modules() if hasattr(m, "lora_E")):
            e = torch.randn(4, 1, generator=g)
            e[: i % 4] = 0  # AdaLoRA's budget pruned a different number of ranks in each module
            m.lora_E["default"].copy_(e)
            m.lora_B["default"].copy_(torch.randn(m.lora_B["default"].shape, generator=g) * 0.1)
            kept[name] = 4 - i % 4
    sd = kohya_tensors(base)
    downs = {k.split(".")[0]: v for k, v in sd.items() if k.endswith("lora_down.weight")}
    assert {v.shape[0] for v in downs.values()} == {4}  # one rank in the file (zero-padded): diffusers-safe
    live = {n: int((v.abs().sum(1) > 0).sum()) for n, v in downs.items()}
    assert sorted(live.values()) == sorted(r for r in kept.values() if r)  # fully pruned modules are left out
    path = tmp_path / "ada.safetensors"
    save_tensors(path, sd, {}, "fp32")
    fresh = build_tiny("sd1")
    apply_kohya(fresh, path)
    assert (unet_output(fresh) - unet_output(base)).abs().max().item() <= 1e-5
