"""Preview images: fixed seeds, sampler choice, generation parameters in the PNG (A1111 style)."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, PngImagePlugin

from trainer.run.atomic import atomic_write_bytes

SAMPLERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "ddim": ("DDIMScheduler", {}),
}
A1111_SAMPLER_NAMES = {"euler": "Euler", "euler_a": "Euler a", "dpmpp_2m": "DPM++ 2M", "ddim": "DDIM"}


@dataclass
class SampleSpec:
    prompt: str
    seed: int
    negative: str = ""
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "dpmpp_2m"
    width: int = 512
    height: int = 512


def make_scheduler(name: str, train_scheduler):
    import diffusers

    cls_name, extra = SAMPLERS[name]
    cls = getattr(diffusers, cls_name)
    return cls.from_config(train_scheduler.config, **extra)


@torch.no_grad()
def generate(base, spec: SampleSpec, device: torch.device | str = "cpu") -> Image.Image:
    """One image from the base as it is now (adapters included); training RNG untouched."""
    pipe = base.pipeline(scheduler=make_scheduler(spec.sampler, base.scheduler))
    gen = torch.Generator(device="cpu").manual_seed(spec.seed)
    modules = [base.unet, *base.text_encoders]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        out = pipe(prompt=spec.prompt, negative_prompt=spec.negative or None, num_inference_steps=spec.steps,
                   guidance_scale=spec.cfg, width=spec.width, height=spec.height, generator=gen,
                   output_type="pil")
    finally:
        for m, was in zip(modules, modes):
            m.train(was)
    return out.images[0]


def a1111_parameters(spec: SampleSpec, model_name: str = "", lora: tuple[str, float] | None = None,
                     model_hash: str = "") -> str:
    """The 'parameters' text A1111 writes into PNGs; Civitai reads resources from it."""
    prompt = spec.prompt
    if lora:
        prompt = f"{prompt} <lora:{lora[0]}:{lora[1]:g}>"
    line = (f"Steps: {spec.steps}, Sampler: {A1111_SAMPLER_NAMES.get(spec.sampler, spec.sampler)}, "
            f"CFG scale: {spec.cfg:g}, Seed: {spec.seed}, Size: {spec.width}x{spec.height}")
    if model_name:
        line += f", Model: {model_name}"
    if model_hash:
        line += f", Model hash: {model_hash[:10]}"
    return f"{prompt}\nNegative prompt: {spec.negative}\n{line}"


def save_png(image: Image.Image, path: Path, parameters: str) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buf.getvalue())
