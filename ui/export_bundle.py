"""Export: the adapter of a run (always resolved from the run id), and the Civitai bundle
(adapter + previews carrying A1111 parameters + a model card)."""
from __future__ import annotations

import io
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from trainer.config import TrainConfig, load_config
from trainer.data.images import IMAGE_EXTENSIONS
from trainer.data.masks import is_mask_file
from trainer.formats import infotext
from trainer.models.spec import display_name
from trainer.run.atomic import atomic_write_text
from trainer.run.best import Suggestion, suggest
from trainer.run.events import run_view
from trainer.run.folder import RunFolder
from trainer.formats.safetensors_io import SafetensorsError, read_header

from ui.paths import UnsafePath, inside


def run_config(run_dir: Path) -> TrainConfig:
    return load_config(RunFolder(run_dir).effective_config)  # the settings it really trained with


CHOICE_FILE = "choice.json"  # in export/: the checkpoint the user picked, and the source of the edited copy


def _final(run_dir: Path) -> Path | None:
    """The trainer's newest adapter (the final one once the run finished)."""
    final = run_view(run_dir).adapter
    candidates = [final] if final else []
    candidates.append(f"output/{run_config(run_dir).saving.output_name}.safetensors")
    for rel in candidates:
        try:
            p = inside(run_dir, rel)
        except UnsafePath:
            continue
        if p.is_file():
            return p
    return None


def read_choice(run_dir: Path) -> dict:
    try:
        data = json.loads((run_dir / "export" / CHOICE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_choice(run_dir: Path, **fields: str) -> None:
    atomic_write_text(run_dir / "export" / CHOICE_FILE, json.dumps({**read_choice(run_dir), **fields}, indent=1))


def suggestion(run_dir: Path) -> Suggestion:
    """The checkpoint trainer.run.best suggests publishing (validation loss and prior drift), with its reason."""
    return suggest(run_dir, run_config(run_dir).saving.trigger_phrase)


def chosen_source(run_dir: Path) -> Path | None:
    """The trainer's file Export gives: the one the user picked, else the suggested one, else the newest."""
    picked = read_choice(run_dir).get("adapter")
    if not picked:
        pick = suggestion(run_dir).pick
        picked = pick.adapter if pick else None
    if picked:
        try:
            p = inside(run_dir, str(picked))
        except UnsafePath:
            p = None
        if p is not None and p.is_file():
            return p
    return _final(run_dir)


def adapter_path(run_dir: Path) -> Path | None:
    """The file Download and the bundle give: the edited copy the metadata editor wrote from the chosen
    checkpoint, else the chosen checkpoint itself (trainer's output, never changed)."""
    src = chosen_source(run_dir)
    edited = run_dir / "export" / f"{run_config(run_dir).saving.output_name}.safetensors"
    if edited.is_file():
        final = _final(run_dir)
        edited_from = read_choice(run_dir).get("edited_from") or (  # older runs: edits were of the final one
            str(final.relative_to(run_dir)) if final else None)
        if src is None or edited_from == str(src.relative_to(run_dir)):
            return edited
    return src


@dataclass(frozen=True)
class SavedAdapter:
    step: int
    path: Path
    final: bool
    ema: bool = False

    @property
    def label(self) -> str:
        """How comparison grids and pickers name it: by training step."""
        return f"step {self.step}" + (" EMA" if self.ema else "") + (" (final)" if self.final else "")


def checkpoint_adapters(run_dir: Path, ema: bool = True) -> list[SavedAdapter]:
    """Every saved adapter of the run (checkpoints and the final one; with ema, their moving averages
    saved beside them), oldest first."""
    view = run_view(run_dir)
    final = view.adapter if view.state == "finished" else None
    out: dict[Path, SavedAdapter] = {}
    for ev in view.checkpoints:
        step = int(ev.get("step") or 0)
        for key in ("adapter", "ema_adapter") if ema else ("adapter",):
            rel = ev.get(key)
            try:
                p = inside(run_dir, rel) if rel else None
            except UnsafePath:
                continue
            if p is not None and p.is_file():
                out[p] = SavedAdapter(step, p, ev.get("adapter") == final, key == "ema_adapter")
    return sorted(out.values(), key=lambda a: (a.step, a.ema))


def edited_card_fields(cfg: TrainConfig, adapter: Path) -> TrainConfig:
    """The run's config with the title, trigger words and description the adapter itself carries: the
    metadata editor changes the file, not the run's config, and the card must describe the file."""
    try:
        meta = read_header(adapter).metadata
    except SafetensorsError:
        return cfg
    if "modelspec.title" not in meta:  # written without ModelSpec: the config is all we know
        return cfg
    cfg = cfg.model_copy(deep=True)
    cfg.saving.title = meta.get("modelspec.title", "")
    cfg.saving.trigger_phrase = meta.get("modelspec.trigger_phrase", "")
    cfg.saving.description = meta.get("modelspec.description", "")
    return cfg


def a1111_parameters(cfg: TrainConfig, sample: dict, lora_name: str, width: int, height: int) -> str:
    s = cfg.sampling
    return infotext.a1111_parameters(sample.get("prompt", ""), negative=s.negative_prompt, steps=s.steps,
                                     sampler=s.sampler, guidance_scale=s.guidance_scale, seed=sample.get("seed"),
                                     width=width, height=height, model_name=display_name(cfg.model.base),
                                     lora=(lora_name, 1.0))


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
    adapter = adapter_path(run_dir)
    if adapter is None:
        raise FileNotFoundError(f"{run_dir.name}: the run has no adapter yet")
    cfg = edited_card_fields(run_config(run_dir), adapter)
    name = adapter.stem
    view = run_view(run_dir)
    source = chosen_source(run_dir)
    steps = next((a.step for a in checkpoint_adapters(run_dir) if a.path == source), view.step)
    samples = [ev for ev in view.adapter_samples() if int(ev.get("step") or 0) <= steps]  # none from later on
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
        n_images = sum(1 for p in (run_dir / "dataset").rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and not is_mask_file(p.name))  # masks are no images
        z.writestr("README.md", model_card(cfg, name, n_images, steps, fits=adapter_fits(adapter)))
    tmp.replace(out)
    return out
