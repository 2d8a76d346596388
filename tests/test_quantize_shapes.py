"""QLoRA on any CPU: the layers bitsandbytes' CPU 4-bit kernel cannot take (AVX512-BF16 machines repack
weights in tiles of 32 outputs × 64 inputs and crash on other shapes) stay in full precision, on every
CPU alike, and the run says how many."""
from __future__ import annotations

import torch

from trainer.adapter.quantize import fits_cpu_4bit_kernel, quantize_nf4
from trainer.models.tiny import build_tiny


def test_the_shape_rule():
    assert fits_cpu_4bit_kernel(64, 32) and fits_cpu_4bit_kernel(320, 1280) and fits_cpu_4bit_kernel(2048, 640)
    assert not fits_cpu_4bit_kernel(32, 128)  # in_features < 64: the kernel's absmax has 0 columns
    assert not fits_cpu_4bit_kernel(80, 128)  # not whole blocks of 64 inputs
    assert not fits_cpu_4bit_kernel(128, 48)  # not whole tiles of 32 outputs
    # every Linear of SD1.5, SD2 and SDXL (widths 320…5120, text 768/1024/1280, 77×… never a Linear) fits
    for width in (320, 640, 768, 1024, 1280, 2048, 2560, 5120):
        assert fits_cpu_4bit_kernel(width, width) and fits_cpu_4bit_kernel(width, 4 * width)


def test_unfit_layers_stay_full_precision_and_are_counted():
    import bitsandbytes as bnb

    unet = build_tiny("sd1").unet
    shapes = {n: (m.in_features, m.out_features) for n, m in unet.named_modules() if type(m) is torch.nn.Linear}
    rep = quantize_nf4(unet, "cpu")
    mods = dict(unet.named_modules())
    fit = {n for n, s in shapes.items() if fits_cpu_4bit_kernel(*s)}
    assert fit and len(fit) < len(shapes)  # the tiny model has both kinds
    assert {n for n in shapes if isinstance(mods[n], bnb.nn.Linear4bit)} == fit
    assert all(type(mods[n]) is torch.nn.Linear for n in set(shapes) - fit)
    assert rep.layers == len(fit) and rep.kept_linear == len(shapes) - len(fit)
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():  # eval mode, no grad: the path AVX512-BF16 CPUs repack for
        out = unet(x, 10, torch.randn(1, 77, unet.config.cross_attention_dim)).sample
    assert torch.isfinite(out).all()


def test_an_eval_forward_leaves_the_weights_in_the_layout_every_path_reads():
    """On AVX512-BF16 CPUs bitsandbytes repacked a 4-bit weight in place at its first eval forward (a preview);
    the trained model and the base + its saved file then disagreed (0.73 on the tiny UNet). quantize_nf4 turns
    that repacking off, so an eval forward changes no weight on any CPU, and dequantising gives the same W."""
    import bitsandbytes as bnb

    unet = build_tiny("sd1").unet.eval()
    quantize_nf4(unet, "cpu")
    q = [m for m in unet.modules() if isinstance(m, bnb.nn.Linear4bit)]
    before = [(m.weight.data.clone(), bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state)) for m in q]
    with torch.no_grad():
        unet(torch.randn(1, 4, 16, 16), 10, torch.randn(1, 77, unet.config.cross_attention_dim))
    for m, (data, w) in zip(q, before):
        assert not m.support_avx512bf16_for_cpu
        assert not getattr(m.weight.quant_state, "packing_format_for_cpu", False)
        assert torch.equal(m.weight.data, data)
        assert torch.equal(bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state), w)
