"""Export: the adapter of a run (always resolved from the run id), and the Civitai bundle
(adapter + previews carrying A1111 parameters + a model card)."""
from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from trainer.config import TrainConfig, load_config
from trainer.run.events import CONFIG_FILE, read_events

from ui.paths import UnsafePath, inside

SAMPLER_NAMES = {"euler": "Euler", "euler_a": "Euler a", "dpmpp_2m": "DPM++ 2M", "ddim": "DDIM"}


def run_config(run_dir: Path) -> TrainConfig:
    return load_config(run_dir / CONFIG_FILE)


def adapter_path(run_dir: Path) -> Path | None:
    """The run's newest adapter: an edited copy if the metadata editor wrote one, else the trainer's output."""
    cfg = run_config(run_dir)
    edited = run_dir / "export" / f"{cfg.saving.output_name}.safetensors"
    if edited.is_file():
        return edited
    final = None
    for ev in read_events(run_dir):
        if ev.get("type") in ("finished", "checkpoint") and ev.get("adapter"):
            final = ev["adapter"]
    candidates = [final] if final else []
    candidates.append(f"output/{cfg.saving.output_name}.safetensors")
    for rel in candidates:
        try:
            p = inside(run_dir, rel)
        except UnsafePath:
            continue
        if p.is_file():
            return p
    return None


def checkpoint_adapters(run_dir: Path) -> list[tuple[str, Path]]:
    """(label, path) of every saved adapter of the run, oldest first."""
    out, seen = [], set()
    for ev in read_events(run_dir):
        if ev.get("type") in ("checkpoint", "finished") and ev.get("adapter"):
            try:
                p = inside(run_dir, ev["adapter"])
            except UnsafePath:
                continue
            if p.is_file() and p not in seen:
                seen.add(p)
                out.append((f"step {ev.get('step')} · {p.name}", p))
    return out


def a1111_parameters(cfg: TrainConfig, sample: dict, lora_name: str, width: int, height: int) -> str:
    neg = cfg.sampling.negative_prompt
    prompt = f"{sample.get('prompt', '')} <lora:{lora_name}:1>"
    return (f"{prompt}\nNegative prompt: {neg}\nSteps: {cfg.sampling.steps}, "
            f"Sampler: {SAMPLER_NAMES.get(cfg.sampling.sampler, cfg.sampling.sampler)}, CFG scale: {cfg.sampling.cfg}, "
            f"Seed: {sample.get('seed')}, Size: {width}x{height}, Model: {Path(cfg.model.base).name}")


def where_it_loads(lora_name: str, fits: str | None) -> str:
    """The card's line on where the adapter can be used: only clients that can load it."""
    if fits:
        return (f"This adapter fits only `{fits}`, the base it was trained on (its layers differ from "
                "SD1.5/SDXL): use it in LoRA Atelier's Generate tab with that base. A1111/Forge, ComfyUI and "
                "diffusers cannot apply it to their models.")
    return f"Use in A1111/Forge: `<lora:{lora_name}:1>` with the trigger words in the prompt."


def adapter_fits(adapter: Path) -> str | None:
    """The custom base an adapter file says it alone fits (None: a standard SD1.5/SD2/SDXL file)."""
    from trainer.formats.metadata import custom_base
    from trainer.formats.safetensors_io import SafetensorsError, read_header

    try:
        return custom_base(read_header(adapter).metadata)
    except (SafetensorsError, OSError):
        return None


def model_card(cfg: TrainConfig, lora_name: str, n_images: int, steps: int, fits: str | None = None) -> str:
    s = cfg.saving
    rows = [("Base model", cfg.model.base), ("Adapter", f"{cfg.network.algo} rank {cfg.network.rank}, alpha "
            f"{cfg.network.alpha}" + (" (DoRA)" if cfg.network.use_dora else "")),
            ("Steps", steps), ("Resolution", cfg.dataset.resolution), ("Batch size", cfg.dataset.batch_size),
            ("Optimizer", f"{cfg.optimizer.name}, lr {cfg.optimizer.lr:g}"), ("Schedule", cfg.schedule.scheduler),
            ("Min-SNR gamma", cfg.noise.min_snr_gamma), ("Noise offset", cfg.noise.noise_offset),
            ("Training images", n_images), ("Seed", cfg.schedule.seed)]
    lines = [f"# {s.title or lora_name}", "", s.description or "A LoRA trained with LoRA Atelier.", "",
             f"**Trigger words:** {s.trigger_phrase or '(none)'}", "",
             where_it_loads(lora_name, fits), "",
             "## Training settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def build_bundle(run_dir: Path, max_previews: int = 8) -> Path:
    """Write export/<name>-civitai.zip in the run folder and return its path."""
    cfg = run_config(run_dir)
    adapter = adapter_path(run_dir)
    if adapter is None:
        raise FileNotFoundError(f"{run_dir.name}: the run has no adapter yet")
    name = adapter.stem
    samples = [ev for ev in read_events(run_dir) if ev.get("type") == "sample" and ev.get("kind", "adapter") != "base"]
    steps = max((int(ev.get("step", 0)) for ev in read_events(run_dir) if ev.get("type") == "step"), default=0)
    out = run_dir / "export" / f"{name}-civitai.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{time.time_ns()}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.write(adapter, f"{name}.safetensors")
        for i, ev in enumerate(samples[-max_previews:]):
            try:
                src = inside(run_dir, ev["path"])
                im = Image.open(src)
                im.load()
            except (UnsafePath, OSError, KeyError):
                continue
            info = PngInfo()
            info.add_text("parameters", a1111_parameters(cfg, ev, name, im.width, im.height))
            buf = io.BytesIO()
            im.save(buf, "PNG", pnginfo=info)
            z.writestr(f"previews/{name}-{i:02d}-step{ev.get('step', 0)}.png", buf.getvalue())
        n_images = sum(1 for p in (run_dir / "dataset").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".webp", ".bmp"))
        z.writestr("README.md", model_card(cfg, name, n_images, steps, fits=adapter_fits(adapter)))
    tmp.replace(out)
    return out
