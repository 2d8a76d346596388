"""The precision a run trains in (issue #19): bf16 on a CPU only where the CPU computes it natively (or when
forced), the adapter and optimizer in fp32 under it, the precision used in the events and the adapter's
header, and torch.compile as an option that leaves the exported keys alone."""
import json
import math

import pytest
import torch
from safetensors import safe_open

from tests.helpers import events, make_dataset, run_trainer, write_config
from trainer.train.device import choose_precision, cpu_flags, native_cpu_bf16

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ZEN4 = "flags\t\t: avx2 avx512f avx512_bf16\n"


def test_cpu_flags_decide_native_bf16():
    assert "avx2" in cpu_flags(AVX2_ONLY) and not native_cpu_bf16(cpu_flags(AVX2_ONLY))
    assert native_cpu_bf16(cpu_flags(SAPPHIRE)) and native_cpu_bf16(cpu_flags(ZEN4))
    assert cpu_flags("no flags here") == frozenset() and not native_cpu_bf16(frozenset())


@pytest.mark.parametrize("device, mixed, cpu_bf16, native, cuda_bf16, used, noted", [
    ("cpu", "bf16", "auto", True, False, "bf16", False),   # AVX512-BF16 / AMX: the schema default trains bf16
    ("cpu", "bf16", "auto", False, False, "fp32", True),   # AVX2 only: fp32, and the run says why
    ("cpu", "bf16", "on", False, False, "bf16", True),     # forced: emulated, and said so
    ("cpu", "bf16", "on", True, False, "bf16", False),
    ("cpu", "bf16", "off", True, False, "fp32", True),
    ("cpu", "fp16", "on", True, False, "fp32", True),      # fp16 on a CPU stays fp32
    ("cpu", "no", "on", True, False, "fp32", False),
    ("cuda:1", "bf16", "auto", False, True, "bf16", False),
    ("cuda", "bf16", "off", False, False, "fp16", True),   # a GPU without bf16 (cpu_bf16 is about CPUs)
    ("cuda", "fp16", "auto", False, True, "fp16", False),
    ("mps", "bf16", "on", True, False, "fp32", True),
])
def test_precision_policy(device, mixed, cpu_bf16, native, cuda_bf16, used, noted):
    got, why = choose_precision(device, mixed, cpu_bf16, cpu_native=native, cuda_bf16=cuda_bf16)
    assert got == used and bool(why) == noted, why


def test_estimate_counts_base_weights_in_the_precision_used():
    from trainer.config import load_preset
    from trainer.estimate import estimate

    cfg = load_preset("sd15-anime")
    forced = cfg.model_copy(deep=True)
    forced.precision.cpu_bf16, forced.precision.mixed_precision = "on", "bf16"
    fp32 = cfg.model_copy(deep=True)
    fp32.precision.mixed_precision = "no"
    half, full = estimate(forced, device="cpu"), estimate(fp32, device="cpu")
    assert half["memory_breakdown"]["base_weights"] * 2 == full["memory_breakdown"]["base_weights"]
    assert (half["dtype"], full["dtype"]) == ("bf16", "fp32")
    asked = estimate(cfg, device="cpu")  # bf16 asked, cpu_bf16 auto: what this CPU reports decides
    assert asked["dtype"] == ("bf16" if native_cpu_bf16() else "fp32")


def _adapter(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.slow
def test_forced_cpu_bf16_trains_and_compile_keeps_the_exported_keys(tmp_path):
    """Forced bf16 on this CPU (emulated where it is not native: the same numbers as a native one) trains
    the tiny model with finite losses; the frozen UNet and text encoder are bf16, the adapter and the
    optimizer fp32; the events and the header say bf16. A second run with torch.compile on (the eager
    backend through torch's own override: the compiled wrapper, whose state dict would carry `_orig_mod.`,
    without minutes of C++ code generation) exports the same keys and records fp32 and compile."""
    from trainer.config import load_config
    from trainer.run.events import run_view
    from trainer.train.loop import Trainer
    from ui.live import phase_text

    data = make_dataset(tmp_path / "data", n=2)
    common = {"dataset.path": str(data), "network.train_text_encoder": "true", "schedule.max_train_steps": 2,
              "sampling.every_n_steps": 0, "sampling.at_start": "false", "saving.precision": "fp32"}
    bf16_run = tmp_path / "bf16"
    cfg = load_config(write_config(bf16_run, **common, **{"precision.mixed_precision": "bf16",
                                                          "precision.cpu_bf16": "on"}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(cfg, bf16_run, quiet=True)
        assert trainer.run() == 0
    finally:
        torch.set_num_threads(threads)
    assert trainer.dtype == torch.bfloat16
    assert {p.dtype for p in trainer.base.unet.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in trainer.base.text_encoders[0].parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in trainer.network.all_params()} == {torch.float32}
    assert {v.dtype for s in trainer.optimizer.state.values() for v in s.values() if v.ndim} == {torch.float32}
    assert next(trainer.base.vae.parameters()).dtype == torch.float32
    ev = events(bf16_run)
    started = next(e for e in ev if e["type"] == "started")
    assert started["precision"] == "bf16" and started["dtype"] == "bfloat16" and started["compiled"] is False
    assert all(math.isfinite(e["loss"]) for e in ev if e["type"] == "step")
    tensors, meta = _adapter(bf16_run / "output" / "tiny-test.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32} and all(t.isfinite().all() for t in tensors.values())
    assert meta["ss_mixed_precision"] == "bf16"
    assert json.loads(meta["ss_atelier_precision"]) == {"used": "bf16", "requested": "bf16", "compiled": False}

    compiled_run = tmp_path / "compiled"
    write_config(compiled_run, **common, **{"precision.mixed_precision": "bf16", "precision.cpu_bf16": "off",
                                            "precision.compile": "true"})
    r = run_trainer("train", str(compiled_run / "config.toml"), "--quiet",
                    env={"TORCH_COMPILE_OVERRIDE_BACKENDS": ">=0:eager"})
    assert r.returncode == 0, r.stderr[-3000:]
    ev = events(compiled_run)
    started = next(e for e in ev if e["type"] == "started")
    assert started["precision"] == "no" and started["compiled"] is True and "cpu_bf16 = off" in started["precision_note"]
    # the warm-up is announced between set-up and the first step
    types = [(e["type"], e.get("phase")) for e in ev]
    assert types.index(("phase", "compiling")) < types.index(("step", None))
    view = run_view(compiled_run)
    view.phase, view.state = next(e for e in ev if e.get("phase") == "compiling"), "running"
    assert phase_text(view, "running") == "compiling the UNet (the first step is slow)…"
    compiled, meta = _adapter(compiled_run / "output" / "tiny-test.safetensors")
    assert set(compiled) == set(tensors) and not any("_orig_mod" in k for k in compiled)
    assert all(compiled[k].shape == tensors[k].shape for k in tensors)
    assert meta["ss_mixed_precision"] == "no"
    assert json.loads(meta["ss_atelier_precision"]) == {"used": "no", "requested": "bf16", "compiled": True}
