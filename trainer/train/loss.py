"""The training objective, in the order of the diffusers example's step: noise and timesteps from the
run's own generator (so a resumed run draws the same ones), the noisy latents, the target the UNet
learns (ε, or v for v-prediction), and the per-sample weights (min-SNR-γ; the prior-loss weight of
regularisation images). The next loss options land here: masked loss, Huber, debiased estimation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.config import NoiseSection


def draw_noise(latents: torch.Tensor, cfg: NoiseSection, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, timesteps) for a batch of latents, drawn on the CPU from `gen` (device-independent)."""
    bsz, dev = latents.shape[0], latents.device
    noise = torch.randn(latents.shape, generator=gen).to(dev)
    if cfg.noise_offset:  # a per-channel constant shift: lets the model learn overall brightness
        noise = noise + cfg.noise_offset * torch.randn((bsz, latents.shape[1], 1, 1), generator=gen).to(dev)
    timesteps = torch.randint(cfg.min_timestep, cfg.max_timestep, (bsz,), generator=gen).to(dev)
    return noise, timesteps


def prediction_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                      v_prediction: bool) -> torch.Tensor:
    return scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise


def snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio α̅/(1-α̅) per timestep; 0 at the last step of a zero-terminal-SNR schedule."""
    ac = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    return ac / (1 - ac)


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023): min(SNR, γ)/SNR for ε-prediction, min(SNR, γ)/(SNR+1) for v.
    At SNR 0 (zero terminal SNR) the ε weight is its limit, 1, not 0/0."""
    s = snr(scheduler, timesteps)
    if v_prediction:
        return torch.clamp(s, max=gamma) / (s + 1)
    return torch.where(s > 0, torch.clamp(s, max=gamma) / s, torch.ones_like(s))


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, scheduler,
                   cfg: NoiseSection, v_prediction: bool, sample_weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of each sample's MSE, weighted (min-SNR-γ if on, times `sample_weights`)."""
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if cfg.min_snr_gamma > 0:
        loss = loss * min_snr_weights(scheduler, timesteps, cfg.min_snr_gamma, v_prediction)
    if cfg.v_loss_like_noise and v_prediction:  # sd-scripts' scale_v_prediction_loss_like_noise_prediction
        s = snr(scheduler, timesteps)
        loss = loss * s / (s + 1)
    return (loss * sample_weights.to(loss.device)).mean()
