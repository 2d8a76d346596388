"""Preview images: fixed seeds, sampler choice, generation parameters in the PNG (A1111 style)."""
from __future__ import annotations

import io
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, PngImagePlugin

from trainer.formats import infotext
from trainer.run.atomic import atomic_write_bytes

SAMPLERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "ddim": ("DDIMScheduler", {}),
}


@dataclass
class SampleSpec:
    prompt: str
    seed: int
    negative: str = ""
    steps: int = 20
    guidance_scale: float = 7.0
    sampler: str = "dpmpp_2m"
    width: int = 512
    height: int = 512
    guidance_rescale: float = 0.0  # 0.7 against over-exposure on zero-terminal-SNR models (Lin et al. 2023)


def make_scheduler(name: str, train_scheduler):
    """The preview sampler over the training schedule: its prediction type, and for a zero-terminal-SNR
    schedule its rescaled betas and trailing timestep spacing (so sampling starts from pure noise)."""
    import diffusers

    cls_name, extra = SAMPLERS[name]
    cls = getattr(diffusers, cls_name)
    return cls.from_config(train_scheduler.config, **extra)


@torch.no_grad()
def generate_batch(base, specs: list[SampleSpec],
                   on_step: Callable[[int], None] | None = None) -> list[Image.Image]:
    """One image per spec from the base as it is now (adapters included), in ONE pipeline call: the
    specs share steps, guidance, sampler and size; each keeps its own prompt, negative and seed (one
    generator per image), so an image does not depend on its neighbours. Training RNG untouched.
    on_step(n) is told after each of the call's denoising steps (n from 1 to the spec's steps)."""
    first = specs[0]
    shared = {(s.steps, s.guidance_scale, s.sampler, s.width, s.height, s.guidance_rescale) for s in specs}
    if len(shared) != 1:
        raise ValueError("a preview batch must share steps, guidance scale, sampler and size")
    pipe = base.pipeline(scheduler=make_scheduler(first.sampler, base.scheduler))
    gens = [torch.Generator(device="cpu").manual_seed(s.seed) for s in specs]
    negatives = [s.negative for s in specs]
    with in_eval_mode([base.unet, *base.text_encoders]):
        out = pipe(prompt=[s.prompt for s in specs], negative_prompt=negatives if any(negatives) else None,
                   num_inference_steps=first.steps, guidance_scale=first.guidance_scale, width=first.width,
                   height=first.height, generator=gens, output_type="pil",
                   **({"guidance_rescale": first.guidance_rescale} if first.guidance_rescale else {}),
                   **({"callback_on_step_end": _step_callback(on_step)} if on_step else {}))
    return out.images


@contextmanager
def in_eval_mode(modules: list[torch.nn.Module]):
    """The modules in eval mode (dropout off) for the duration; each one's own mode back afterwards."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, was in zip(modules, modes):
            m.train(was)


def _step_callback(on_step: Callable[[int], None]):
    def callback(pipe, i, t, kwargs):  # diffusers' callback_on_step_end: i counts from 0
        on_step(i + 1)
        return kwargs
    return callback


def generate(base, spec: SampleSpec) -> Image.Image:
    """One image (see generate_batch)."""
    return generate_batch(base, [spec])[0]


def a1111_parameters(spec: SampleSpec, model_name: str = "", lora: tuple[str, float] | None = None,
                     model_hash: str = "") -> str:
    """The 'parameters' text A1111 writes into PNGs (trainer.formats.infotext) for this spec."""
    return infotext.a1111_parameters(spec.prompt, negative=spec.negative, steps=spec.steps, sampler=spec.sampler,
                                     guidance_scale=spec.guidance_scale, seed=spec.seed, width=spec.width,
                                     height=spec.height, model_name=model_name, model_hash=model_hash, lora=lora)


def save_png(image: Image.Image, path: Path, parameters: str) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buf.getvalue())
