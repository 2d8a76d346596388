"""A micro-batch through the model, in the order of the diffusers example's step: the latents (cached, or
encoded now), noise and timesteps from the run's own generator, the noisy latents, the conditioning, the
UNet's prediction, and the loss against its target (ε, or v for v-prediction).

The step runs it through the wrapped modules that train (DDP, compile); validation through the bare ones
(`bare()`: rank 0 alone validates, so no collective may run there)."""
from __future__ import annotations

import torch

from trainer.config import TrainConfig
from trainer.train.conditioning import encode_text
from trainer.train.loss import diffusion_loss, draw_noise, prediction_target
from trainer.train.caching import Encoders
from trainer.train.setup import autocast_for, compile_unet


class Forward:
    def __init__(self, cfg: TrainConfig, base, encoders: Encoders, device: str, dtype: torch.dtype,
                 unet=None, text_encoders=None):
        self.cfg, self.base, self.encoders, self.device, self.dtype = cfg, base, encoders, device, dtype
        self.unet = base.unet if unet is None else unet
        self.text_encoders = base.text_encoders if text_encoders is None else text_encoders

    @classmethod
    def of_run(cls, cfg: TrainConfig, base, network, encoders: Encoders, device: str, dtype: torch.dtype,
               wrap) -> Forward:
        """Through the modules as the step runs them: `wrap`ped for the processes (DDP), the UNet compiled
        when precision.compile is on."""
        unet = wrap(base.unet)
        return cls(cfg, base, encoders, device, dtype, unet=compile_unet(unet) if cfg.precision.compile else unet,
                   text_encoders=[wrap(te) if i in network.text_encoders else te
                                  for i, te in enumerate(base.text_encoders)])

    def bare(self) -> Forward:
        return Forward(self.cfg, self.base, self.encoders, self.device, self.dtype)

    def loss(self, batch: dict, noise_gen: torch.Generator) -> torch.Tensor:
        latents = self.latents(batch)
        noise, timesteps = draw_noise(latents, self.cfg.noise, noise_gen)
        pred, target = self.predict(batch, latents, noise, timesteps)
        # regularisation images carry the prior-loss weight; masked images their mask (masked loss)
        return diffusion_loss(pred, target, timesteps, self.base.scheduler, self.cfg.noise, self.base.is_v,
                              batch["loss_weights"], masks=batch.get("masks"))

    def latents(self, batch: dict) -> torch.Tensor:
        latents = batch.get("latents")
        if latents is None:
            latents = self.encoders.pixels(batch["pixels"])
        return latents.to(self.device, torch.float32)

    def predict(self, batch: dict, latents: torch.Tensor, noise: torch.Tensor,
                timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the UNet's prediction on the noised latents, its target)."""
        base, dev, dtype = self.base, self.device, self.dtype
        noisy = base.scheduler.add_noise(latents, noise, timesteps)
        cond = batch.get("text") or encode_text(base, batch["captions"], self.cfg.model.clip_skip, dev,
                                                encoders=self.text_encoders)
        cond = {k: v.to(dev) for k, v in cond.items()}
        kwargs = {}
        if base.is_sdxl:
            # SDXL's size conditioning: original size, crop top-left, target size (all height, width)
            time_ids = torch.cat([batch["original_sizes"], batch["crop_top_lefts"], batch["target_sizes"]], dim=1)
            kwargs["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"].to(dtype),
                                           "time_ids": time_ids.to(dev, dtype)}
        with autocast_for(dev, dtype):
            pred = self.unet(noisy.to(dtype), timesteps, cond["encoder_hidden_states"].to(dtype), **kwargs).sample
        return pred, prediction_target(base.scheduler, latents, noise, timesteps, base.is_v)
