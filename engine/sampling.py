"""The sampler: the reference timestep grid, the expert per step, and flow-matching Euler with per-expert guidance.

The grid is the one every reference uses for Wan 2.2 I2V: sigma = linspace(1, 0, n + 1)[:-1], shifted by
`shift * s / (1 + (shift - 1) * s)`, then stepped to sigma = 0. Sources, all giving 1000, 937.5, 833.3, 625
for 4 steps at shift 5:
- SVI 2.0 Pro / DiffSynth `FlowMatchScheduler.set_timesteps_wan` (vita-epfl/Stable-Video-Infinity, branch
  svi_wan22, diffsynth/diffusion/flow_match.py);
- LightX2V's step-distill scheduler, `denoising_step_list` [1000, 750, 500, 250] shifted
  (ModelTC/LightX2V lightx2v/models/schedulers/wan/step_distill/scheduler.py);
- Wan 2.2's `get_sampling_sigmas` (Wan-Video/Wan2.2 wan/utils/fm_solvers.py); its UniPC gives 999, 937, 833, 624;
- ComfyUI's `simple` scheduler with shift 5.
diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps(n)` alone spaces n points down to an already shifted
sigma_min and shifts again (1000, 909.7, 717.3, 24.4 for 4 steps); given the unshifted `sigmas=` it yields the
reference grid, which is how it is used here.

The expert switch is the one of Wan (`t >= boundary` runs the high-noise expert, wan/image2video.py), diffusers'
WanImageToVideoPipeline (`t >= boundary_timestep`) and SVI 2.0 Pro (switches once `t < boundary * 1000`): a step
exactly on the boundary runs on the high-noise expert.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .config import GenerationSettings
from .errors import Cancelled
from .preview import predicted_x0

NUM_TRAIN_TIMESTEPS = 1000


def unshifted_sigmas(num_steps: int) -> np.ndarray:
    """linspace(1, 0, n + 1)[:-1]: n values from 1 down to 1/n; the sampler then steps to 0."""
    return np.linspace(1.0, 0.0, num_steps + 1)[:-1]


def make_scheduler(settings: GenerationSettings, device: torch.device | str | None = None):
    """diffusers' flow-matching Euler scheduler set to the reference grid (it applies the shift once)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=settings.shift)
    scheduler.set_timesteps(sigmas=unshifted_sigmas(settings.num_inference_steps), device=device)
    return scheduler


def segment_timesteps(settings: GenerationSettings) -> torch.Tensor:
    """The n timesteps of one segment, fp32, from 1000 down."""
    return make_scheduler(settings).timesteps


def is_high(t: torch.Tensor | float, settings: GenerationSettings) -> bool:
    return bool(t >= settings.boundary_ratio * NUM_TRAIN_TIMESTEPS)


def expert_per_step(settings: GenerationSettings) -> list[str]:
    """'high' or 'low' for every step of a segment."""
    return ["high" if is_high(t, settings) else "low" for t in segment_timesteps(settings)]


def forwards_per_segment(settings: GenerationSettings) -> int:
    """Transformer forwards per segment: one per step, two where that step's expert runs with guidance."""
    guidance = {"high": settings.guidance_high, "low": settings.guidance_low}
    return sum(2 if guidance[e] > 1.0 else 1 for e in expert_per_step(settings))


@torch.inference_mode()
def denoise(models, cond: torch.Tensor, mask: torch.Tensor, prompt_embeds: torch.Tensor,
            negative_embeds: torch.Tensor | None, settings: GenerationSettings, seed: int,
            on_step: Callable[[int], None] | None = None,
            should_cancel: Callable[[], bool] | None = None,
            on_x0: Callable[[int, Callable[[], torch.Tensor]], None] | None = None) -> torch.Tensor:
    """Flow-matching Euler from pure noise to z (16, T, h, w), switching experts at the boundary.

    Each step runs the expert of its timestep with that expert's guidance: cond + negative pass mixed as
    `uncond + g * (cond - uncond)` when g > 1 (as WanImageToVideoPipeline and wan/image2video.py do).

    `on_x0(step, x0)` (live previews) gets a function that returns this step's prediction of the clean
    latent, (16, T, h, w); it costs nothing unless called. Without `on_x0` nothing is kept.
    """
    device, dtype = models.device, models.dtype
    scheduler = make_scheduler(settings, device)  # fresh per segment: the scheduler keeps a step index
    # Noise from a CPU generator so a seed gives the same story on any device.
    generator = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn((1, *cond.shape), generator=generator, dtype=torch.float32).to(device)  # (1, 16, T, h, w)
    known = torch.cat([mask, cond], dim=0)[None].to(device, dtype)  # (1, 20, T, h, w)
    for i, t in enumerate(scheduler.timesteps):
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"cancelled before step {i + 1} of {len(scheduler.timesteps)}")
        high = is_high(t, settings)
        expert = models.transformer if high else models.transformer_2
        guidance = float(settings.guidance_high if high else settings.guidance_low)
        model_input = torch.cat([x.to(dtype), known], dim=1)  # (1, 36, T, h, w)
        timestep = t.expand(1)
        noise_pred = expert(hidden_states=model_input, timestep=timestep,
                            encoder_hidden_states=prompt_embeds, return_dict=False)[0]  # (1, 16, T, h, w)
        if guidance > 1.0:
            noise_uncond = expert(hidden_states=model_input, timestep=timestep,
                                  encoder_hidden_states=negative_embeds, return_dict=False)[0]
            noise_pred = noise_uncond + guidance * (noise_pred - noise_uncond)
        if on_x0 is not None:
            x_t, v, sigma = x, noise_pred.float(), float(scheduler.sigmas[i])
            on_x0(i + 1, lambda: predicted_x0(x_t, v, sigma)[0])  # (16, T, h, w)
        x = scheduler.step(noise_pred.float(), t, x, return_dict=False)[0]  # (1, 16, T, h, w) fp32
        if on_step is not None:
            on_step(i + 1)
    return x[0]
