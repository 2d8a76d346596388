"""Preview rounds: every prompt of a round drawn in one batched pipeline call per kind ("adapter": the
model being trained, "base": the same seeds with the adapter switched off, to compare).

The base images are drawn once per run, at step 0, and kept: a later round (or a resumed process) that
finds them on disk with the same generation parameters reuses them. While the adapter still equals the
base (step 0, B = 0) the adapter is not drawn at all: it would give the base images again.
A preview never costs the run: a failing round becomes a warning and training goes on."""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, ContextManager

from PIL import Image

from trainer.config import TrainConfig, adapter_starts_at_base
from trainer.run.faults import crash_point
from trainer.train.preview_styles import preview_plan
from trainer.train.sampling import SampleSpec, a1111_parameters, generate_batch, save_png
from trainer.train.setup import autocast_for
from trainer.train.timing import due_after


class Previews:
    def __init__(self, cfg: TrainConfig, base, samples_dir: Path, events, device: str, dtype,
                 warn: Callable[..., None], enabled: bool = True, around: Callable[[], ContextManager] = nullcontext):
        # around: what a round runs inside (the trainer's: frozen parts back on the device, memory phase)
        self.cfg, self.base, self.dir, self.events, self.around = cfg, base, Path(samples_dir), events, around
        self.device, self.dtype, self.warn = device, dtype, warn
        self.plan = preview_plan(cfg)  # the config's prompts, or its family style's
        self.enabled = enabled and bool(self.plan.prompts)  # rank 0 alone draws
        self.seconds = 0.0
        self.draw_seconds: list[float] = []  # each drawing of a round's images (base images reused: none)

    def specs(self) -> list[SampleSpec]:
        s, plan = self.cfg.sampling, self.plan
        return [SampleSpec(prompt=p, seed=s.seed + j, negative=plan.negative, steps=s.steps,
                           guidance_scale=s.guidance_scale, sampler=s.sampler, width=plan.size, height=plan.size,
                           guidance_rescale=s.guidance_rescale)
                for j, p in enumerate(plan.prompts)]

    def at_start(self, step: int) -> None:
        """The round before the first step (a fresh run's step 0), as configured."""
        if self.cfg.sampling.at_start and step == 0:
            self.round(0, with_base=self.cfg.sampling.with_base, adapter_is_base=adapter_starts_at_base(self.cfg))

    def round(self, step: int, with_base: bool = False, adapter_is_base: bool = False) -> None:
        """Draw the adapter's previews at `step`, and the base's if asked. While the adapter equals the
        base, one drawing serves: recorded as the base images (or as the adapter's step-0 images when
        base images are off)."""
        if not self.enabled:
            return
        if adapter_is_base:
            kinds = ["base" if with_base else "adapter"]
        else:
            kinds = ["adapter"] + (["base"] if with_base else [])
        t0 = time.time()
        try:
            steps, n = self.cfg.sampling.steps, len(self.plan.prompts)
            with self.around():
                for i, kind in enumerate(kinds):
                    self.events.emit("phase", phase="preview", done=i * steps, total=len(kinds) * steps, images=n)
                    self._draw(kind, step, self._progress(i * steps, len(kinds) * steps, n))
        except Exception as e:  # the adapter and state are saved separately: a preview is an extra
            self.warn(f"preview at step {step} failed ({type(e).__name__}: {e}); training goes on", step=step)
        finally:
            self.seconds += time.time() - t0

    def seconds_left(self, step: int, max_steps: int) -> float:
        """The previews still due after `step` (each later round draws the adapter only), at the pace of
        the drawings so far; 0 before the first."""
        if not self.enabled or not self.draw_seconds:
            return 0.0
        every = self.cfg.sampling.every_n_steps
        return due_after(step, max_steps, every) * sum(self.draw_seconds) / len(self.draw_seconds)

    def _progress(self, before: int, total: int, images: int) -> Callable[[int], None]:
        """Tells the page the round's denoising steps, at most twice a second (a GPU takes ~20 a second)."""
        last = [time.monotonic()]

        def on_step(n: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.5 and before + n < total:
                last[0] = now
                self.events.emit("phase", phase="preview", done=before + n, total=total, images=images)
        return on_step

    def _draw(self, kind: str, step: int, on_step: Callable[[int], None] | None = None) -> None:
        specs = self.specs()
        base = kind == "base"
        names = [f"base_p{j}.png" if base else f"step{step:06d}_p{j}.png" for j in range(len(specs))]
        lora = None if base else (self.cfg.saving.output_name, 1.0)
        params = [a1111_parameters(s, self.base.name, lora) for s in specs]
        if base and all(_has_params(self.dir / n, p) for n, p in zip(names, params)):
            return  # drawn earlier in this run (or before a resume) with the same settings
        self.dir.mkdir(parents=True, exist_ok=True)
        self._set_adapters(not base)
        t0 = time.time()
        try:
            crash_point("preview-error", step)
            with autocast_for(self.device, self.dtype):  # fp16 UNet, fp32 VAE
                images = generate_batch(self.base, specs, on_step)
        finally:
            self._set_adapters(True)
        self.draw_seconds.append(time.time() - t0)
        crash_point("sample", step)
        for j, (spec, name, text, img) in enumerate(zip(specs, names, params, images)):
            save_png(img, self.dir / name, text)
            self.events.emit("sample", step=step, path=f"samples/{name}", prompt=spec.prompt, seed=spec.seed,
                             kind=kind, index=j)

    def _set_adapters(self, enabled: bool) -> None:
        from trainer.adapter.network import disable_adapters

        for m in [self.base.unet, *self.base.text_encoders]:
            disable_adapters(m, not enabled)


def _has_params(path: Path, parameters: str) -> bool:
    try:
        with Image.open(path) as im:
            return im.info.get("parameters") == parameters
    except (OSError, ValueError):
        return False
