"""The training loop: set up → loop (step, control, previews, saves) → save → previews → finished.

Readable like the diffusers example scripts: the stages live in their own modules (setup, caching,
forward and loss, processes, previews, timing; trainer.formats.export for the file). Determinism is a
feature: noise and timesteps come from a saved generator, data order from (seed, epoch), so a run stopped
at step k and resumed ends with the same adapter as one that never stopped.
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import torch

from trainer.config import TrainConfig, save_config
from trainer.formats.export import RunFacts
from trainer.models.checks import launch_warnings
from trainer.run.events import ControlPoller, EventWriter, nothing_to_resume
from trainer.run.folder import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_STOPPED, RunFolder
from trainer.run.faults import crash_point
from trainer.run.state import clean_partial
from trainer.train import checkpoints, setup
from trainer.train.ema import EMA
from trainer.train.caching import Caching, Encoders
from trainer.train.forward import Forward
from trainer.train.frozen import FrozenParts
from trainer.train.memory import PhasePeaks, reporter
from trainer.train.previews import Previews
from trainer.train.processes import Processes
from trainer.train.setup import TrainingError  # noqa: F401 (part of this API)
from trainer.train.timing import Progress, StepDisplay, Timing
from trainer.train.validation import Validation

EXIT_BY_STATUS = {"finished": EXIT_OK, "failed": EXIT_FAILED, "stopped": EXIT_STOPPED}


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool = False, quiet: bool = False):
        self.cfg = cfg
        self.paths = RunFolder(Path(run_dir))
        self.resume = resume
        self.quiet = quiet
        # under torchrun / accelerate launch every process trains its shard; rank 0 alone writes the run folder
        self.procs = Processes.from_env()
        self.events = EventWriter(self.paths.root, enabled=self.procs.is_main)
        self.control = ControlPoller(self.paths.root, self.events)
        self.progress = Progress()
        self.timing = Timing()
        self.stop_requested = False
        self.display = None
        self.cache_stats: dict = {}
        self.validation: Validation | None = None
        self.ema: EMA | None = None
        self.memory: PhasePeaks | None = None
        self.frozen: FrozenParts | None = None

    def run(self) -> int:
        """Train; the exit code says how it ended (EXIT_BY_STATUS), the events say why."""
        stop_on_signals(self)
        refusal = self.resume and nothing_to_resume(self.paths.root, self.cfg.schedule.max_train_steps)
        if refusal:  # a run that died after its last step but before finishing still resumes to save
            print(f"config error: {refusal}", file=sys.stderr)
            return EXIT_CONFIG
        try:
            status = self._run()
            self.procs.leave()
            return EXIT_BY_STATUS[status]
        except TrainingError as e:
            self.events.emit("error", message=str(e))
            self._log(f"error: {e}")
        except KeyboardInterrupt:
            self.events.emit("finished", status="stopped", step=self.progress.step)
            return EXIT_STOPPED
        except Exception as e:  # an unexpected crash still ends the run as failed, with the reason
            import traceback

            tb = traceback.format_exc(limit=8)
            self.events.emit("error", message=f"{type(e).__name__}: {e}", traceback=tb)
            self._log(tb)
        self.events.emit("finished", status="failed", step=self.progress.step)
        return EXIT_FAILED

    def _log(self, msg: str) -> None:
        if not self.quiet and self.procs.is_main:
            print(msg, file=sys.stderr, flush=True)

    def _warn(self, message: str, **extra) -> None:
        self.events.emit("warning", message=message, **extra)
        self._log(f"warning: {message}")

    # ---- the story
    def _run(self) -> str:
        cfg, t_start = self.cfg, time.time()
        self._set_up()
        self.events.emit("started", **setup.started_fields(
            cfg, self.base, self.dataset, self.network, self.device, self.dtype, self.precision_note,
            resumed_from=self.progress.step, startup_s=time.time() - t_start))
        self.display = StepDisplay(self.paths.root, cfg.schedule.max_train_steps, self.progress.step,
                                   terminal=sys.stderr.isatty() and not self.quiet and self.procs.is_main)
        self.previews.at_start(self.progress.step)
        if self.progress.step == 0:
            self._validate()  # the base's loss: where the curve starts
        if cfg.precision.compile and self.progress.step < cfg.schedule.max_train_steps:
            # torch.compile works on the first call: say so, or a minute without a step looks like a hang
            self.events.emit("phase", phase="compiling", done=0, total=0)
            self._log("compiling the UNet: the first step is slow")
        status = self._loop()
        self.display.close()
        self.procs.report(self.paths.root, checkpoints.trainable_state(self.base))
        if status == "failed":
            self.events.emit("finished", status="failed", step=self.progress.step)
            return status
        # save first, then extras: a final preview that fails costs a warning, never the adapter.
        # A stopped run's adapter is named by its step, so the resumed run's final file takes the plain name.
        adapter = self._save(final=status == "finished")
        if status == "finished":
            self.previews.round(self.progress.step)
        self.timing.seconds["sample"] = self.previews.seconds
        self.memory.enter(None)
        self.events.emit("finished", status=status, step=self.progress.step, adapter=adapter,
                         wall_s=round(time.time() - t_start, 2), timing=self.timing.report(self.progress),
                         memory=self.memory.report())
        return status

    def _set_up(self) -> None:
        cfg, root = self.cfg, self.paths.root
        for removed in clean_partial(self.paths.checkpoints):
            self._warn(f"removed a half-written state {removed} left by an earlier crash")
        if self.procs.is_main:
            save_config(cfg, root / "config.used.toml")
        self.device = self.procs.start(setup.pick_device(cfg))
        self.dtype, self.precision_note = setup.precision_for(cfg, self.device)
        self._log(f"precision: {setup.precision_name(self.dtype)} on {self.device}"
                  + (f" ({self.precision_note})" if self.precision_note else ""))
        self.memory = PhasePeaks(self.device, reporter(self.events, self._log))
        torch.manual_seed(cfg.schedule.seed + self.procs.rank)
        for message in launch_warnings(cfg):  # settings that do not fit the base (read from its header)
            self._warn(message)
        # data first: a bad dataset should fail in seconds, not after loading a 7 GB model
        self.dataset, self.val_dataset = setup.load_data(cfg, root, self._warn)
        self.memory.enter("model load")
        self.base, self.network = setup.model_and_adapter(cfg, root, self.device, self.dtype, self._warn)
        self.encoders = Encoders(self.base, self.device, cfg.model.clip_skip)
        self.caching = Caching(cfg, self.dataset, self.val_dataset, self.base, self.encoders, self.memory,
                               self.timing, self.events, self._warn, self._log)
        self.memory.enter("caching")
        with self.timing.measure("cache"):
            self._prepare_caches()
        self.optimizer, self.lr_scheduler = setup.build_optimizer_and_schedule(cfg, self.network)
        self.noise_gen = torch.Generator(device="cpu").manual_seed(cfg.schedule.seed + 7919 * self.procs.rank)
        o = cfg.optimizer
        if o.ema:
            self.ema = EMA(checkpoints.trainable_state(self.base), o.ema_decay, o.ema_start_step, o.ema_on_cpu)
        self.forward = Forward.of_run(cfg, self.base, self.network, self.encoders, self.device, self.dtype,
                                      self.procs.wrap)
        self.resumable = checkpoints.Resumable(self.paths, cfg, self.base, self.network, self.optimizer,
                                               self.lr_scheduler, self.noise_gen, self.progress, self.ema)
        if self.resume:
            self.resumable.resume(self._warn, self._log)
        self.facts = RunFacts.of_run(cfg, self.base, self.dataset, self.procs.world, self.progress.started_at,
                                     self.paths.samples, setup.precision_name(self.dtype))
        self.previews = Previews(cfg, self.base, self.paths.samples, self.events, self.device, self.dtype,
                                 self._warn, enabled=self.procs.is_main, around=self.caching.around_previews)
        if self.val_dataset is not None and self.procs.is_main:  # rank 0 alone validates, on the bare modules
            bare = self.forward.bare()
            self.validation = Validation.of_run(cfg, self.val_dataset, self.base, bare.latents, bare.predict)
        # the VAE and the text encoders a step does not run leave the device once the caches are full
        self.frozen = self.caching.track_frozen_parts(self.network, self.device, keep=self.previews.enabled)
        self.caching.release_when_done(self.progress.epoch)
        self.memory.enter("training")

    def _prepare_caches(self) -> None:
        self.cache_stats = self.caching.prepare()

    # ---- the loop
    def _loop(self) -> str:
        max_steps = self.cfg.schedule.max_train_steps
        batches = self.batch_stream()
        while self.progress.step < max_steps:
            commands = self.train_step(batches)
            if commands is None:
                return "failed"
            if "stop" in commands:
                self.stop_requested = True
                return "stopped"
            if self.progress.step < max_steps:
                self.caching.release_when_done(self.progress.epoch)
                self._between_steps(commands)
        return "finished"

    def batch_stream(self):
        """The batches from the run's position on, with the trained modules in training mode."""
        p = self.progress
        self.base.unet.train()
        for i in self.network.text_encoders:
            self.base.text_encoders[i].train()
        return self.procs.batches(self.dataset.epoch_batches, p.epoch, p.batch_in_epoch)

    def train_step(self, batches) -> set[str] | None:
        """One optimizer step (forward and backward over the micro-batches, the ranks' agreement, the
        update, the step event): the commands to act on before the next step, or None when the loss was
        not finite (the error event says so). bench/step_overhead.py times this very method."""
        p = self.progress
        t0, encoding_s = time.time(), self.dataset.encodings.seconds
        loss, keys, finite = self._accumulate(batches)
        finite, commands = self.procs.agree(finite, self.control.poll() if self.procs.is_main else set(),
                                            self.stop_requested)
        if not finite:
            self.events.emit("error", message=f"loss became {loss} at step {p.step + 1}: training stopped; no "
                             "adapter was written from the poisoned weights. Lower the learning rate or use "
                             "fp32/bf16.", step=p.step + 1)
            return None
        self._optimizer_step()
        p.step += 1
        self.procs.record(keys)
        crash_point("step", p.step)
        # the step's pace without the encoding on first use: the ETA adds what is left of that separately
        p.step_times.append(time.time() - t0 - (self.dataset.encodings.seconds - encoding_s))
        self._report_step(loss, keys)
        return commands

    def _accumulate(self, batches) -> tuple[float, list[str], bool]:
        """Forward and backward over grad_accum micro-batches: (summed loss, sample keys, all finite)."""
        accum, p = self.cfg.schedule.grad_accum, self.progress
        loss_sum, keys, finite = 0.0, [], True
        for _ in range(accum):
            epoch, bi, idx = next(batches)
            with self.timing.measure("data"):
                self.dataset.encode_first_use(idx, epoch)  # a no-op once everything is cached
                batch = self.dataset.collate([self.dataset.sample(i, epoch) for i in idx])
            keys.extend(batch.get("keys", []))
            loss = self.forward.loss(batch, self.noise_gen) / accum
            finite = finite and bool(torch.isfinite(loss))
            loss.backward()  # a non-finite loss poisons only gradients, which the caller never applies
            loss_sum += loss.item()
            p.epoch, p.batch_in_epoch = epoch, bi + 1
        return loss_sum, keys, finite

    def _optimizer_step(self) -> None:
        if self.cfg.optimizer.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.network.all_params(), self.cfg.optimizer.max_grad_norm)
        self.optimizer.step()
        self.network.after_step(self.progress.step + 1)  # e.g. AdaLoRA's rank reallocation, before grads are cleared
        if self.ema is not None:
            self.ema.update(self.progress.step + 1)
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _report_step(self, loss: float, keys: list[str]) -> None:
        p, max_steps, lr = self.progress, self.cfg.schedule.max_train_steps, self.lr_scheduler.get_last_lr()[0]
        to_encode = self.dataset.pending_encodings
        extra = (self.previews.seconds_left(p.step, max_steps) + self.timing.saves_left(p.step, max_steps, self.cfg)
                 + self.dataset.encodings.seconds_left())
        encoding = {"encoded": self.dataset.encodings.encoded, "to_encode": to_encode} if to_encode else {}
        self.events.emit("step", **p.step_fields(max_steps, loss, lr, keys, extra), **encoding)
        self.display.update(p.step, loss, lr)

    def _between_steps(self, commands: set[str]) -> None:
        """Saves and previews due at this step (on schedule, or asked for from the GUI): save first."""
        step, cfg = self.progress.step, self.cfg
        if "save_now" in commands or (cfg.saving.every_n_steps and step % cfg.saving.every_n_steps == 0):
            self._save(final=False)  # validates too
        elif cfg.validation.every_n_steps and step % cfg.validation.every_n_steps == 0:
            self._validate()
        if "sample_now" in commands or (cfg.sampling.every_n_steps and step % cfg.sampling.every_n_steps == 0):
            self.previews.round(step)

    # ---- saving and resuming
    def _save(self, final: bool) -> str | None:
        """Resumable state, then the kohya adapter (checkpoints.Resumable); the checkpoint event names both."""
        if not self.procs.is_main:
            return None
        with self.timing.measure("save"):
            state_dir, path, ema_path = self.resumable.save(self.facts, final)
        rel = lambda p: str(p.relative_to(self.paths.root))  # noqa: E731
        adapter, ema = rel(path), {"ema_adapter": rel(ema_path)} if ema_path else {}
        self.events.emit("checkpoint", step=self.progress.step, state=rel(state_dir), adapter=adapter, **ema)
        self._validate(state_dir, {"state": rel(state_dir), "adapter": adapter, **ema})
        return adapter

    def _validate(self, state_dir: Path | None = None, checkpoint: dict | None = None) -> None:
        """The validation loss of the weights now (and of their EMA, once it averages): trainer.train.validation."""
        if self.validation is not None:
            with self.timing.measure("validate"):
                self.validation.report(self.progress.step, self.ema, self.events, self.display, self._warn,
                                       state_dir, checkpoint)


def stop_on_signals(trainer: Trainer) -> None:
    """SIGTERM / Ctrl-C ask for a graceful stop (save, then exit); a second one gives up at once."""
    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False, quiet: bool = False) -> int:
    return Trainer(cfg, run_dir, resume=resume, quiet=quiet).run()
