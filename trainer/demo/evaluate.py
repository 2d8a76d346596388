"""Measure the demo base and a demo adapter: seeded prompts in, accuracies and scores out.

    python -m trainer.demo.evaluate [--base FOLDER] [--adapter FILE.safetensors]
"""
from __future__ import annotations

import argparse
import json
import sys
from itertools import product
from pathlib import Path

import torch

from trainer.demo.score import attribute_accuracy, concept_score, mean_abs_difference
from trainer.demo.shapes import BACKGROUNDS, COLOURS, SHAPES, TRIGGER

SHAPES_BASE = Path(__file__).resolve().parent.parent / "assets" / "shapes_base"
STEPS, CFG = 20, 5.0
# every shape × colour × background: chance is 1/4 for colour, 1/3 for shape
ATTRIBUTE_SPECS: list[tuple[str, str, str]] = list(product(SHAPES, COLOURS, BACKGROUNDS))
CONCEPT_PROMPTS = [f"a {TRIGGER} pattern"] * 4 + [f"a {c} {TRIGGER} pattern on a {b} background"
                                                  for c, b in product(COLOURS, BACKGROUNDS)]


def shape_prompt(shape: str, colour: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def load_pipeline(folder: str | Path = SHAPES_BASE):
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample(pipe, prompts: list[str], seed: int = 0, steps: int = STEPS, cfg: float = CFG, chunk: int = 12):
    """One image per prompt; prompt i uses seed + i, so two pipelines can be compared image by image."""
    images = []
    for i in range(0, len(prompts), chunk):
        part = prompts[i:i + chunk]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(part))]
        images += pipe(part, num_inference_steps=steps, guidance_scale=cfg, generator=gens).images
    return images


def base_accuracy(pipe, seed: int = 0, specs=ATTRIBUTE_SPECS) -> dict[str, float]:
    images = sample(pipe, [shape_prompt(*s) for s in specs], seed)
    return attribute_accuracy(images, list(specs))


def concept_and_prior(base_pipe, adapted_pipe, seed: int = 1000, before: bool = True) -> dict[str, float]:
    """The concept score with the adapter on trigger prompts (and without it, with `before`: that one is the
    base's alone, the same for every adapter), and how far the adapter moves prompts without the trigger
    (same seeds) — plus their colour/shape accuracy without and with the adapter."""
    prior_prompts = [shape_prompt(*s) for s in ATTRIBUTE_SPECS]
    base_prior, adapted_prior = sample(base_pipe, prior_prompts, seed), sample(adapted_pipe, prior_prompts, seed)
    acc, base_acc = attribute_accuracy(adapted_prior, ATTRIBUTE_SPECS), attribute_accuracy(base_prior, ATTRIBUTE_SPECS)
    # the yardstick for the drift: how far the base's own images move when only the seed changes
    other_seed = sample(base_pipe, prior_prompts, seed + 4000)
    before_score = {"concept_before": concept_score(sample(base_pipe, CONCEPT_PROMPTS, seed))} if before else {}
    return {**before_score,
            "concept_after": concept_score(sample(adapted_pipe, CONCEPT_PROMPTS, seed)),
            "prior_striped_after": concept_score(adapted_prior),
            "prior_mean_abs_diff": mean_abs_difference(base_prior, adapted_prior),
            "base_seed_to_seed_diff": mean_abs_difference(base_prior, other_seed),
            "prior_colour_after": acc["colour"], "prior_shape_after": acc["shape"],
            "prior_colour_before": base_acc["colour"], "prior_shape_before": base_acc["shape"]}


def load_adapter(pipe, adapter: str | Path, scale: float = 1.0):
    """Load a kohya-format adapter file into `pipe` with diffusers' own loader."""
    pipe.load_lora_weights(str(adapter), adapter_name="demo")
    pipe.set_adapters(["demo"], adapter_weights=[scale])
    return pipe


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Score the demo base (and an adapter on it).")
    ap.add_argument("--base", default=str(SHAPES_BASE))
    ap.add_argument("--adapter", default="")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    base = load_pipeline(args.base)
    out: dict = {"base": base_accuracy(base, args.seed)}
    if args.adapter:
        out["adapter"] = concept_and_prior(base, load_adapter(load_pipeline(args.base), args.adapter))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
