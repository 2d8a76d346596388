"""The best-checkpoint suggestion on the demo: train presets/demo.toml (validation on, a save every 100
steps), ask trainer.run.best which checkpoint to publish, then measure every checkpoint the way the demo
concept test does (concept score on trigger prompts, prior drift against the base's seed-to-seed
distance) and see whether the suggested one is a good one.

    python bench/best_checkpoint.py [--steps 300] [--out bench/results/best_checkpoint]

Writes OUT.json and OUT.md. About 10 minutes on an idle 2-core CPU."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONCEPT_MIN = 0.8   # the demo's promise (tests/test_demo_concept.py)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--run-dir", default="/tmp/atelier-best-checkpoint")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "best_checkpoint"))
    ap.add_argument("--reuse", action="store_true", help="measure a finished run already in --run-dir again")
    a = ap.parse_args()

    from trainer.demo import evaluate
    from trainer.run.best import DRIFT_SHARE, suggest
    from trainer.run.events import RunView

    run = Path(a.run_dir)
    if a.reuse:
        view = RunView(run).update()
        if view.state != "finished":
            raise SystemExit(f"{run}: no finished run to measure again")
        train_s = view.wall_seconds
    else:
        if run.exists():
            raise SystemExit(f"{run}: exists; pick another --run-dir (or --reuse it)")
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "trainer", "train", str(REPO / "presets" / "demo.toml"),
                            "--run-dir", str(run), "--quiet", "--set", f"schedule.max_train_steps={a.steps}"],
                           cwd=REPO, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            return 1
        train_s = time.time() - t0
    s = suggest(run, "zkq pattern", RunView(run).update())
    base = evaluate.load_pipeline()
    rows = []
    for c in s.candidates:
        adapted = evaluate.load_adapter(evaluate.load_pipeline(), run / c.adapter)
        m = evaluate.concept_and_prior(base, adapted, seed=1000)
        bound = DRIFT_SHARE * m["base_seed_to_seed_diff"]
        rows.append({"checkpoint": c.label, "adapter": c.adapter, "validation_loss": c.loss,
                     "preview_drift": c.drift, "suggested": c == s.pick,
                     "concept_after": m["concept_after"], "prior_mean_abs_diff": m["prior_mean_abs_diff"],
                     "drift_bound": bound,
                     "good": m["concept_after"] >= CONCEPT_MIN and m["prior_mean_abs_diff"] <= bound})
    result = {"date": time.strftime("%Y-%m-%d"), "steps": a.steps, "train_seconds": round(train_s, 1),
              "reason": s.reason, "preview_drift_bound": s.drift_bound, "rows": rows,
              "suggested_is_good": any(r_["suggested"] and r_["good"] for r_ in rows)}
    out = Path(a.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# Best-checkpoint suggestion on the demo ({result['date']})", "",
             f"`python bench/best_checkpoint.py --steps {a.steps}`: presets/demo.toml (validation on: 4 of 20 "
             f"images held out; a save every 100 steps, EMA off), trained in {train_s:.0f} s (2 cores, shared with "
             "other work).", "",
             f"Suggestion: {s.reason}", "",
             "Each checkpoint measured as the demo concept test measures the final one (24 trigger prompts, "
             "24 prompts without the trigger, seed 1000). Good = concept ≥ 0.8 and prior drift ≤ 0.7 × the "
             "base's seed-to-seed distance.", "",
             "| checkpoint | validation loss | preview drift | concept | prior drift | bound | good | suggested |",
             "|---|---|---|---|---|---|---|---|"]
    for r_ in rows:
        drift = f"{r_['preview_drift']:.1f}" if r_["preview_drift"] is not None else "–"
        lines.append(f"| {r_['checkpoint']} | {r_['validation_loss']:.4f} | {drift} | {r_['concept_after']:.2f} | "
                     f"{r_['prior_mean_abs_diff']:.1f} | {r_['drift_bound']:.1f} | {'yes' if r_['good'] else 'no'} | "
                     f"{'**yes**' if r_['suggested'] else ''} |")
    lines += ["", f"The suggested checkpoint is a good one: **{'yes' if result['suggested_is_good'] else 'no'}**."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if result["suggested_is_good"] else 2


if __name__ == "__main__":
    sys.exit(main())
