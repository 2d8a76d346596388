"""The training objective, in the order of the diffusers example's step: noise and timesteps from the
run's own generator (so a resumed run draws the same ones), the noisy latents, the target the UNet
learns (ε, or v for v-prediction), and the per-sample weights (min-SNR-γ; the prior-loss weight of
regularisation images; masked loss). The next loss options land here: Huber, debiased estimation."""
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


def mask_weights(masks: torch.Tensor, unmasked_weight: float) -> torch.Tensor:
    """Per-pixel loss weights from masks in [0, 1]: 1 where the mask is white, `unmasked_weight` where it is
    black, linear in between. Written as m + u·(1 − m) so that a white pixel weighs exactly 1.0."""
    return masks + unmasked_weight * (1.0 - masks)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, unmasked_weight: float) -> torch.Tensor:
    """Each sample's mask-weighted MSE [B]: the per-pixel squared error times the weights, averaged, divided by
    the weights' mean, so a sample's loss keeps its scale however much of it is masked out (the per-sample
    normalisation of sd-scripts' and OneTrainer's masked loss). masks: [B, 1, h, w] at latent resolution."""
    if masks.shape[0] != pred.shape[0] or masks.shape[-2:] != pred.shape[-2:]:
        raise ValueError(f"masked loss: masks of shape {tuple(masks.shape)} do not fit the prediction "
                         f"{tuple(pred.shape)}")
    w = mask_weights(masks.to(pred.device, torch.float32), unmasked_weight)
    per_pixel = F.mse_loss(pred.float(), target.float(), reduction="none") * w
    # an all-black mask with unmasked_weight 0 weighs nothing: its loss is 0, not 0/0
    return per_pixel.mean(dim=(1, 2, 3)) / w.mean(dim=(1, 2, 3)).clamp_min(1e-6)


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, scheduler,
                   cfg: NoiseSection, v_prediction: bool, sample_weights: torch.Tensor,
                   masks: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of each sample's MSE, weighted (min-SNR-γ if on, times `sample_weights`). With
    cfg.masked_loss and `masks` ([B, 1, h, w] in [0, 1]), each sample's MSE is weighted by its mask."""
    if cfg.masked_loss and masks is not None:
        loss = masked_mse(pred, target, masks, cfg.unmasked_weight)
    else:
        loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if cfg.min_snr_gamma > 0:
        loss = loss * min_snr_weights(scheduler, timesteps, cfg.min_snr_gamma, v_prediction)
    if cfg.v_loss_like_noise and v_prediction:  # sd-scripts' scale_v_prediction_loss_like_noise_prediction
        s = snr(scheduler, timesteps)
        loss = loss * s / (s + 1)
    return (loss * sample_weights.to(loss.device)).mean()
