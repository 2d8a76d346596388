"""Suggest trainer/estimate.py's CPU memory constants from a measured bench/results/cpu.json (prints them; edit
estimate.py by hand, then `bench_cpu.py --recheck`). Activation bytes per latent pixel are what remains of
the measured peak RSS after the process baseline (from the tiny row), the weights and the adapter state."""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main(path: str = str(HERE / "results" / "cpu.json")) -> int:
    from trainer.config import TrainConfig, deep_merge, from_dict
    from trainer.estimate import VAE_DOWNSCALE, estimate

    rows = {r["name"]: r for r in json.loads(Path(path).read_text())["results"]}
    fits = {}
    for name, r in rows.items():
        cfg = from_dict(deep_merge(TrainConfig().model_dump(mode="json"), {
            "model": {"base": r["model"]}, "dataset": {"resolution": r["resolution"], "batch_size": r["batch"]}}))
        e = estimate(cfg, device="cpu")
        fam = e["family"]
        px = (r["resolution"] // VAE_DOWNSCALE.get(fam, 8)) ** 2 * r["batch"]
        b = e["memory_breakdown"]
        fits[name] = {"family": fam, "latent_px": px, "rss": r["peak_rss_bytes"],
                      "weights+adapter": b["base_weights"] + b["adapter_and_optimizer"],
                      "s_per_latent_px": r["ours_s_per_step"] / px}
    process = fits["tiny"]["rss"] - fits["tiny"]["weights+adapter"] if "tiny" in fits else None
    print(f"CPU_PROCESS_BYTES ≈ {process:.3e} (tiny: RSS less weights and adapter; its activations are noise)")
    for name, f in fits.items():
        act = (f["rss"] - (process or 0) - f["weights+adapter"]) / f["latent_px"]
        print(f"{name} ({f['family']}): CPU_ACT_BYTES_PER_LATENT_PX ≈ {act:.3e} "
              f"(speed constants: bench/estimate_accuracy.py --fit)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
