"""A1111's generation parameters ("infotext"): the text A1111 writes into a PNG's `parameters` chunk
and Civitai reads resources from. Torch-free: the trainer's previews and the GUI's Civitai bundle
write it through this one function."""
from __future__ import annotations

# our sampler ids (the schema's sampling.sampler) → the names A1111 shows
SAMPLER_NAMES = {"euler": "Euler", "euler_a": "Euler a", "dpmpp_2m": "DPM++ 2M", "ddim": "DDIM"}


def a1111_parameters(prompt: str, *, negative: str = "", steps: int, sampler: str, guidance_scale: float,
                     seed: int | None, width: int, height: int, model_name: str = "", model_hash: str = "",
                     lora: tuple[str, float] | None = None) -> str:
    """'<prompt>\\nNegative prompt: …\\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: …, Size: WxH, …'.
    lora (name, strength) appends A1111's `<lora:name:strength>` to the prompt."""
    if lora:
        prompt = f"{prompt} <lora:{lora[0]}:{lora[1]:g}>"
    line = (f"Steps: {steps}, Sampler: {SAMPLER_NAMES.get(sampler, sampler)}, CFG scale: {guidance_scale:g}, "
            f"Seed: {seed}, Size: {width}x{height}")
    if model_name:
        line += f", Model: {model_name}"
    if model_hash:
        line += f", Model hash: {model_hash[:10]}"
    return f"{prompt}\nNegative prompt: {negative}\n{line}"
