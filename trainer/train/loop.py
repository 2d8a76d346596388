"""The training loop: load → network → data → loop (sample, save, control) → export.

Readable like the diffusers example scripts; each stage lives in its own module. Determinism is a
feature: noise and timesteps come from a saved generator, data order from (seed, epoch), so a run
stopped at step k and resumed ends with the same adapter as one that never stopped.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.train.conditioning import encode_text
from trainer.config import TrainConfig, save_config
from trainer.run.events import ControlPoller, EventWriter
from trainer.run.faults import crash_point
from trainer.adapter.network import build_network, disable_adapters
from trainer.train.sampling import SampleSpec, a1111_parameters, generate, save_png
from trainer.run.state import clean_partial, latest_state, load_state, save_state

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_STOPPED = 0, 1, 2, 3


class TrainingError(RuntimeError):
    """A failure to report to the user as-is (names the file or option at fault)."""


@dataclass
class RunPaths:
    root: Path

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def output(self) -> Path:
        return self.root / "output"


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    started_at: float = field(default_factory=time.time)
    step_times: list = field(default_factory=list)

    def eta(self, max_steps: int) -> float | None:
        if not self.step_times:
            return None
        recent = self.step_times[-20:]
        return (max_steps - self.step) * sum(recent) / len(recent)


# ---------------------------------------------------------------- set-up stages

def autocast_for(device: str, dtype: torch.dtype):
    """Mixed-precision context for a device string like "cuda:1"; a no-op in fp32."""
    kind = device.split(":")[0]
    if dtype == torch.float32:
        return torch.autocast(device_type="cpu", enabled=False)
    return torch.autocast(device_type=kind, dtype=dtype)


def pick_device(cfg: TrainConfig) -> str:
    want = cfg.precision.device
    if want == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise TrainingError("precision.device = cuda, but no CUDA device is available")
    return want


def weight_dtype(cfg: TrainConfig, device: str) -> torch.dtype:
    # mixed precision only where the hardware does it well; on CPU everything stays fp32
    if device == "cuda":
        if cfg.precision.mixed_precision == "bf16" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if cfg.precision.mixed_precision in ("fp16", "bf16"):
            return torch.float16
    return torch.float32


def load_model(cfg: TrainConfig):
    from trainer.models.resolve import load_any

    return load_any(cfg.model.base, family=cfg.model.family, prediction_type=cfg.model.prediction_type,
                    vae=cfg.model.vae)


def load_data(cfg: TrainConfig, root: Path):
    from trainer.data.dataset import TrainDataset
    from trainer.data.scan import DatasetError, scan_dataset

    def resolve(p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else (root / path if (root / path).exists() else Path.cwd() / path)

    if not cfg.dataset.path:
        raise TrainingError("dataset.path is empty: point it at a folder of images")
    try:
        scan = scan_dataset(resolve(cfg.dataset.path), cfg.dataset.caption_extension, cfg.dataset.repeats)
        reg = None
        if cfg.dataset.reg_path:
            reg = scan_dataset(resolve(cfg.dataset.reg_path), cfg.dataset.caption_extension, 1, is_reg=True)
    except DatasetError as e:
        raise TrainingError(str(e)) from None
    return TrainDataset(scan, cfg.dataset, cfg.schedule.seed, reg_scan=reg), scan, reg


# ---------------------------------------------------------------- the trainer

class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool = False, quiet: bool = False):
        self.cfg = cfg
        self.paths = RunPaths(Path(run_dir))
        self.resume = resume
        self.quiet = quiet
        # under torchrun / accelerate launch every process trains its shard; rank 0 alone writes the run folder
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.main = self.rank == 0
        self.events = EventWriter(self.paths.root, enabled=self.main)
        self.control = ControlPoller(self.paths.root)
        self.accelerator = None
        self.progress = Progress()
        self.stop_requested = False
        self.tb = None
        # where the wall time goes (bench/, the finished event)
        self.data_seconds = self.save_seconds = self.cache_seconds = self.sample_seconds = 0.0

    # ---- signals: SIGTERM / Ctrl-C request a graceful stop (save, then exit)
    def _install_signals(self) -> None:
        def handler(signum, frame):
            if self.stop_requested:  # a second signal: give up at once
                raise KeyboardInterrupt
            self.stop_requested = True

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        self._install_signals()
        try:
            code = self._run()
            self._leave_process_group(wait=True)
            return code
        except TrainingError as e:
            self.events.emit("error", message=str(e))
            self.events.emit("finished", status="failed", step=self.progress.step)
            self._log(f"error: {e}")
            return EXIT_FAILED
        except KeyboardInterrupt:
            self.events.emit("finished", status="stopped", step=self.progress.step)
            return EXIT_STOPPED
        except Exception as e:  # an unexpected crash still ends the run as failed, with the reason
            import traceback

            tb = traceback.format_exc(limit=8)
            self.events.emit("error", message=f"{type(e).__name__}: {e}", traceback=tb)
            self.events.emit("finished", status="failed", step=self.progress.step)
            self._log(tb)
            return EXIT_FAILED

    def _log(self, msg: str) -> None:
        if not self.quiet and self.main:
            print(msg, file=sys.stderr, flush=True)

    def _warn(self, message: str, **extra) -> None:
        self.events.emit("warning", message=message, **extra)
        self._log(f"warning: {message}")

    def _run(self) -> int:
        cfg = self.cfg
        t_start = time.time()
        for removed in clean_partial(self.paths.checkpoints):
            self._warn(f"removed a half-written state {removed} left by an earlier crash")
        if self.main:
            save_config(cfg, self.paths.root / "config.used.toml")
        self.device = pick_device(cfg)
        if self.world > 1:
            from accelerate import Accelerator

            self.accelerator = Accelerator(cpu=self.device == "cpu")
            self.device = str(self.accelerator.device)
        self.dtype = weight_dtype(cfg, self.device.split(":")[0])
        torch.manual_seed(cfg.schedule.seed + self.rank)

        # data first: a bad dataset should fail in seconds, not after loading a 7 GB model
        self.dataset, scan, reg = load_data(cfg, self.paths.root)
        for p in self.dataset.problems:
            self._warn(f"{p.file}: {p.reason}", file=p.file, severity=p.severity)

        base = load_model(cfg)
        self.base = base
        for m in [base.unet, base.vae, *base.text_encoders]:
            m.requires_grad_(False)
        # the VAE stays fp32: SDXL's VAE overflows in fp16 (NaN latents), and with caching it runs once
        base.vae.to(self.device)
        for m in [base.unet, *base.text_encoders]:
            m.to(self.device) if self.dtype == torch.float32 else m.to(self.device, self.dtype)
        self.network = build_network(base, cfg.network, total_steps=cfg.schedule.max_train_steps,
                                     clip_skip=cfg.model.clip_skip)
        for p in self.network.all_params():  # trainable weights in fp32 even under mixed precision
            p.data = p.data.float()
        if cfg.network.init_weights:
            from trainer.formats.kohya_import import load_kohya_into

            load_kohya_into(base, Path(cfg.network.init_weights))
        if cfg.precision.gradient_checkpointing:
            base.unet.enable_gradient_checkpointing()
            for i in self.network.text_encoders:
                base.text_encoders[i].gradient_checkpointing_enable()
        if cfg.precision.attention == "xformers":
            try:
                base.unet.enable_xformers_memory_efficient_attention()
            except Exception as e:
                self._warn(f"xformers unavailable ({e}); using PyTorch SDPA")

        self._check_disk()
        self._prepare_caches()

        from trainer.train.optim import build_lr_scheduler, build_optimizer

        self.optimizer = build_optimizer(cfg.optimizer, self.network.params_unet, self.network.params_te)
        self.lr_scheduler = build_lr_scheduler(cfg.schedule, self.optimizer)
        self.noise_gen = torch.Generator(device="cpu").manual_seed(cfg.schedule.seed + 7919 * self.rank)
        # the modules the loss runs through: DDP-wrapped under a multi-process launch (gradients all-reduced)
        self.unet_fwd = base.unet
        self.te_fwd = list(base.text_encoders)
        if self.accelerator is not None:
            self.unet_fwd = self.accelerator.prepare_model(base.unet)
            for i in self.network.text_encoders:
                self.te_fwd[i] = self.accelerator.prepare_model(base.text_encoders[i])

        if self.resume:
            self._restore()
        self.events.emit("started", max_steps=cfg.schedule.max_train_steps, family=base.family,
                         device=self.device, dtype=str(self.dtype).replace("torch.", ""),
                         images=self.dataset.num_images, resumed_from=self.progress.step,
                         trainable_params=sum(p.numel() for p in self.network.all_params()),
                         startup_s=round(time.time() - t_start, 2))
        self._start_tensorboard()

        if cfg.sampling.at_start and self.progress.step == 0 and cfg.sampling.prompts:
            self._sample(with_base=cfg.sampling.with_base)

        status = self._loop()
        if self.world > 1:
            self._shard_report()
            if not self.main:
                return EXIT_OK if status == "finished" else EXIT_STOPPED if status == "stopped" else EXIT_FAILED
        if status == "failed":
            self.events.emit("finished", status="failed", step=self.progress.step)
            return EXIT_FAILED

        if status == "finished" and cfg.sampling.prompts:
            self._sample()  # the final previews, before saving so the adapter's thumbnail shows them
        # a stopped run's adapter is named by its step, so the resumed run's final file takes the plain name
        adapter = self._save(final=status == "finished")
        self.events.emit("finished", status=status, step=self.progress.step, adapter=adapter,
                         wall_s=round(time.time() - t_start, 2), timing=self._timing())
        if self.tb:
            self.tb.close()
        return EXIT_OK if status == "finished" else EXIT_STOPPED

    def _timing(self) -> dict:
        """Seconds spent per activity over this process's run (the benchmark reads them)."""
        return {k: round(v, 3) for k, v in {
            "cache": self.cache_seconds, "data": self.data_seconds,
            "sample": self.sample_seconds, "save": self.save_seconds,
            "steps": sum(self.progress.step_times)}.items()}

    # ---- set-up helpers
    def _check_disk(self) -> None:
        n_params = sum(p.numel() for p in self.network.all_params())
        saves = 1 + (self.cfg.schedule.max_train_steps // self.cfg.saving.every_n_steps
                     if self.cfg.saving.every_n_steps else 0)
        # adapter (fp16) per save, plus states (fp32 weights + 2 optimizer moments) for the kept ones
        need = n_params * 2 * saves + n_params * 12 * (self.cfg.saving.keep_last + 1) + (64 << 20)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.paths.root).free
        if free < need:
            raise TrainingError(f"not enough free disk in {self.paths.root.name}: need about "
                                f"{need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free")

    def _prepare_caches(self) -> None:
        """Encode every image once (and captions, where the text encoder is frozen and captions are not
        shuffled) so that the training step runs the UNet alone. On disk the caches live beside the
        dataset and are reused by later runs; entries are keyed by content, so an edit invalidates
        only its own entry."""
        from trainer.data.cache import LatentCache, TextCache, default_cache_dir, fingerprint_module

        cfg, ds = self.cfg, self.dataset
        cache_dir = default_cache_dir(ds.scan.root) if cfg.dataset.cache_to_disk else None
        if cache_dir is not None and not os.access(ds.scan.root, os.W_OK):
            self._warn(f"dataset folder {ds.scan.root.name} is read-only: caches kept in memory only")
            cache_dir = None
        self.cache_stats: dict = {}
        t0 = time.time()
        text_cached = cfg.dataset.cache_text and not cfg.network.train_text_encoder and ds.text_cacheable
        if cfg.dataset.cache_latents:
            vae = self.base.vae
            vae_id = f"{self.base.family}-vae-mean:{fingerprint_module(vae, str(vae.config.scaling_factor))}"
            ds.attach_latent_cache(LatentCache(cache_dir, vae_id), self._encode_pixels)
        if text_cached:
            te_id = "|".join(fingerprint_module(te) for te in self.base.text_encoders)
            ds.attach_text_cache(TextCache(cache_dir, f"{self.base.family}-te-skip{cfg.model.clip_skip}:{te_id}"),
                                 self._encode_captions)
        if cfg.dataset.cache_latents or text_cached:
            self.cache_stats = ds.precompute()
            self._log(f"caches: {self.cache_stats} in {time.time() - t0:.1f}s")
        self.cache_seconds = time.time() - t0

    @torch.no_grad()
    def _encode_captions(self, captions: list[str]) -> dict[str, torch.Tensor]:
        out = encode_text(self.base, captions, self.cfg.model.clip_skip, self.device)
        return {k: v.float().cpu() for k, v in out.items()}

    @torch.no_grad()
    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.base.vae
        dist = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
        # the mean, not a sample: deterministic, so a cached latent is the latent
        return (dist.mean * vae.config.scaling_factor).float().cpu()

    def _start_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.paths.root / "tensorboard"))
        except Exception:
            self.tb = None

    # ---- the loop
    def _batches(self):
        """(epoch, index in epoch, sample indices), continuing from the saved data position. With N
        processes, each micro-step consumes N consecutive batches and this rank takes its own: the
        shards are disjoint and every rank keeps the same position."""
        p = self.progress
        epoch, start = p.epoch, p.batch_in_epoch
        while True:
            batches = self.dataset.epoch_batches(epoch)
            usable = len(batches) - len(batches) % self.world
            if usable == 0:
                raise TrainingError("the dataset yields no batch (fewer images than batch size × processes?)")
            for bi in range(start, usable, self.world):
                yield epoch, bi + self.world - 1, batches[bi + self.rank]
            epoch, start = epoch + 1, 0

    def _loop(self) -> str:
        cfg = self.cfg
        max_steps = cfg.schedule.max_train_steps
        accum = cfg.schedule.grad_accum
        p = self.progress
        it = self._batches()
        bar = None
        if sys.stderr.isatty() and not self.quiet:
            from tqdm import tqdm

            bar = tqdm(total=max_steps, initial=p.step, unit="step", dynamic_ncols=True)
        self.base.unet.train()
        for i in self.network.text_encoders:
            self.base.text_encoders[i].train()
        self.seen_keys: list[str] = []
        while p.step < max_steps:
            t0 = time.time()
            loss_sum = 0.0
            step_keys: list[str] = []
            for _ in range(accum):
                epoch, bi, idx = next(it)
                t_data = time.time()
                batch = self.dataset.collate([self.dataset.sample(i, epoch) for i in idx])
                self.data_seconds += time.time() - t_data
                step_keys.extend(batch.get("keys", []))
                loss = self._loss(batch) / accum
                if not self._all_finite(loss):
                    self.events.emit("error", message=f"loss became {loss.item()} at step {p.step + 1}: "
                                     "training stopped; no adapter was written from the poisoned weights. "
                                     "Lower the learning rate or use fp32/bf16.", step=p.step + 1)
                    return "failed"
                loss.backward()
                loss_sum += loss.item()
                p.epoch, p.batch_in_epoch = epoch, bi + 1
            if cfg.optimizer.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.network.all_params(), cfg.optimizer.max_grad_norm)
            self.optimizer.step()
            self.network.after_step(p.step + 1)  # e.g. AdaLoRA's rank reallocation, before grads are cleared
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            p.step += 1
            if self.world > 1:  # what each rank trained on, for the shard report
                self.seen_keys.extend(step_keys)
            crash_point("step", p.step)
            dt = time.time() - t0
            p.step_times.append(dt)
            lr = self.lr_scheduler.get_last_lr()[0]
            eta = p.eta(max_steps)
            self.events.emit("step", step=p.step, max_steps=max_steps, loss=round(loss_sum, 6), lr=lr,
                             batch=self._digest(step_keys),
                             epoch=p.epoch, it_s=round(1 / dt, 3) if dt > 0 else None,
                             eta_s=round(eta, 1) if eta is not None else None)
            if self.tb:
                self.tb.add_scalar("loss", loss_sum, p.step)
                self.tb.add_scalar("lr", lr, p.step)
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{lr:.2e}")

            commands = self._sync_commands(self.control.poll() if self.main else set())
            if "stop" in commands:
                self.stop_requested = True
            if self.stop_requested:
                return "stopped"
            if p.step < max_steps:
                every = cfg.sampling.every_n_steps
                if ("sample_now" in commands or (every and p.step % every == 0)) and cfg.sampling.prompts:
                    self._sample()
                save_every = cfg.saving.every_n_steps
                if "save_now" in commands or (save_every and p.step % save_every == 0):
                    self._save(final=False)
        if bar:
            bar.close()
        return "finished"

    @staticmethod
    def _digest(keys: list[str]) -> str:
        """A short fingerprint of what a step trained on, so a resumed run's data order can be checked."""
        import hashlib

        return hashlib.sha256("|".join(keys).encode()).hexdigest()[:12]

    # ---- multi-process agreement: every rank must take the same branch or the collectives hang
    def _all_finite(self, loss: torch.Tensor) -> bool:
        ok = torch.tensor([1.0 if torch.isfinite(loss) else 0.0])
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())

    def _sync_commands(self, commands: set[str]) -> set[str]:
        if self.world == 1:
            return commands
        import torch.distributed as dist

        names = ["stop", "sample_now", "save_now"]
        flags = torch.tensor([1.0 if (n in commands or (n == "stop" and self.stop_requested)) else 0.0
                              for n in names])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return {n for n, f in zip(names, flags.tolist()) if f}

    def _leave_process_group(self, wait: bool) -> None:
        """Under N processes, wait until rank 0 has written the adapter, then close the process group:
        a rank that exits with the group open can abort its peer's (gloo) connection mid-save."""
        if self.world == 1:
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            if wait:
                dist.barrier()
            dist.destroy_process_group()

    def _shard_report(self) -> None:
        """Under N processes each rank records what it trained on and a digest of its adapter, so a
        test (or a suspicious user) can check that shards were disjoint and the replicas agree."""
        import hashlib
        import json

        h = hashlib.sha256()
        for k, v in sorted(self.trainable_state().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        out = self.paths.root / "ddp"
        out.mkdir(exist_ok=True)
        (out / f"rank{self.rank}.json").write_text(json.dumps(
            {"rank": self.rank, "world": self.world, "adapter_sha256": h.hexdigest(), "keys": self.seen_keys}))

    def _loss(self, batch: dict) -> torch.Tensor:
        cfg, base = self.cfg, self.base
        dev = self.device
        if batch.get("latents") is not None:
            latents = batch["latents"].to(dev, torch.float32)
        else:
            latents = self._encode_pixels(batch["pixels"]).to(dev)
        bsz = latents.shape[0]
        noise = torch.randn(latents.shape, generator=self.noise_gen).to(dev)
        if cfg.noise.noise_offset:
            noise = noise + cfg.noise.noise_offset * torch.randn(
                (bsz, latents.shape[1], 1, 1), generator=self.noise_gen).to(dev)
        timesteps = torch.randint(cfg.noise.min_timestep, cfg.noise.max_timestep, (bsz,),
                                  generator=self.noise_gen).to(dev)
        sched = base.scheduler
        noisy = sched.add_noise(latents, noise, timesteps)
        cond = batch.get("text") or encode_text(self.base, batch["captions"], cfg.model.clip_skip, dev,
                                                encoders=self.te_fwd)
        cond = {k: v.to(dev) for k, v in cond.items()}
        kwargs = {}
        if base.is_sdxl:
            # SDXL's size conditioning: original size, crop top-left, target size (all height, width)
            time_ids = torch.cat([batch["original_sizes"], batch["crop_top_lefts"], batch["target_sizes"]], dim=1)
            kwargs["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"].to(self.dtype),
                                           "time_ids": time_ids.to(dev, self.dtype)}
        with autocast_for(dev, self.dtype):
            pred = self.unet_fwd(noisy.to(self.dtype), timesteps, cond["encoder_hidden_states"].to(self.dtype),
                             **kwargs).sample
        target = sched.get_velocity(latents, noise, timesteps) if base.is_v else noise
        loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if cfg.noise.min_snr_gamma > 0:
            ac = sched.alphas_cumprod.to(dev)[timesteps]
            snr = ac / (1 - ac)
            weight = torch.clamp(snr, max=cfg.noise.min_snr_gamma) / (snr + 1 if base.is_v else snr)
            loss = loss * weight
        # regularisation images carry the prior-loss weight
        loss = loss * batch["loss_weights"].to(dev)
        return loss.mean()

    # ---- previews
    def _sample(self, with_base: bool = False) -> None:
        if not self.main:
            return
        cfg = self.cfg.sampling
        size = cfg.size or self.cfg.dataset.resolution
        step = self.progress.step
        self.paths.samples.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        passes = [("adapter", False)] + ([("base", True)] if with_base else [])
        for kind, disabled in passes:
            if disabled:
                self._set_adapters(False)
            try:
                for j, prompt in enumerate(cfg.prompts):
                    spec = SampleSpec(prompt=prompt, seed=cfg.seed + j, negative=cfg.negative_prompt,
                                      steps=cfg.steps, cfg=cfg.cfg, sampler=cfg.sampler, width=size, height=size)
                    with autocast_for(self.device, self.dtype):  # fp16 UNet, fp32 VAE
                        img = generate(self.base, spec, self.device)
                    crash_point("sample", step)
                    name = f"base_p{j}.png" if kind == "base" else f"step{step:06d}_p{j}.png"
                    params = a1111_parameters(spec, self.base.name,
                                              None if kind == "base" else (self.cfg.saving.output_name, 1.0))
                    save_png(img, self.paths.samples / name, params)
                    self.events.emit("sample", step=step, path=f"samples/{name}", prompt=prompt, seed=spec.seed,
                                     kind=kind, index=j)
            finally:
                if disabled:
                    self._set_adapters(True)
        self.sample_seconds += time.time() - t0

    def _set_adapters(self, enabled: bool) -> None:
        for m in [self.base.unet, *self.base.text_encoders]:
            disable_adapters(m, not enabled)

    # ---- saving and resuming
    def trainable_state(self) -> dict[str, torch.Tensor]:
        out = {}
        for prefix, model in [("unet", self.base.unet)] + [(f"te{i}", te) for i, te in enumerate(self.base.text_encoders)]:
            for name, prm in model.named_parameters():
                if prm.requires_grad:
                    out[f"{prefix}.{name}"] = prm
        return out

    def _save(self, final: bool) -> str | None:
        """Resumable state, then the kohya adapter. A failed save (disk full…) leaves the previous
        ones intact and ends the run with the reason."""
        if not self.main:
            return None
        p = self.progress
        t_save = time.time()
        try:
            state_dir = save_state(self.paths.checkpoints, p.step, self.trainable_state(), self.optimizer,
                                   self.lr_scheduler,
                                   {"epoch": p.epoch, "batch_in_epoch": p.batch_in_epoch,
                                    "generators": {"noise": self.noise_gen.get_state()}},
                                   self.cfg.saving.keep_last)
            crash_point("adapter", p.step)
            adapter = self._export(final)
        except OSError as e:
            raise TrainingError(f"saving at step {p.step} failed ({e.strerror or e}); the previous adapter and "
                                "state are intact") from None
        self.save_seconds += time.time() - t_save
        self.events.emit("checkpoint", step=p.step, state=str(state_dir.relative_to(self.paths.root)),
                         adapter=adapter)
        return adapter

    def _export(self, final: bool) -> str:
        from trainer.formats.export import export_adapter

        name = self.cfg.saving.output_name
        stem = name if final else f"{name}-step{self.progress.step:06d}"
        path = export_adapter(self, self.paths.output, stem)
        return str(path.relative_to(self.paths.root))

    def _restore(self) -> None:
        state_dir = latest_state(self.paths.checkpoints)
        if state_dir is None:
            self._warn("--resume: no saved state in this run folder; starting from step 0")
            return
        adapter, opt_sd, rng, info = load_state(state_dir)
        params = self.trainable_state()
        missing = set(params) - set(adapter)
        if missing:
            raise TrainingError(f"{state_dir.name}: the saved state does not match this network "
                                f"({len(missing)} tensors missing, e.g. {sorted(missing)[0]})")
        with torch.no_grad():
            for k, prm in params.items():
                prm.copy_(adapter[k].to(prm.device, prm.dtype))
        self.optimizer.load_state_dict(opt_sd)
        self.lr_scheduler.load_state_dict(info["lr_scheduler"])
        torch.set_rng_state(rng["torch_cpu"])
        self.noise_gen.set_state(rng["gen_noise"])
        self.progress.step = info["step"]
        self.progress.epoch = info["epoch"]
        self.progress.batch_in_epoch = info["batch_in_epoch"]
        self._log(f"resumed from {state_dir.name}")


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False, quiet: bool = False) -> int:
    return Trainer(cfg, run_dir, resume=resume, quiet=quiet).run()
