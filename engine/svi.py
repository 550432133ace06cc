"""SVI 2.0 Pro story generation: one Wan 2.2 I2V segment per prompt, chained by latent carry-over.

`generate_story` reads top to bottom like the SVI 2.0 Pro pipeline: anchor once, then per segment build the
conditioning, denoise with the high- then low-noise expert, decode and drop the overlap.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from storage.errors import BadSetting, EmptyPrompt

from .config import GenerationSettings
from .errors import Cancelled
from .models.loading import Models, free_memory
from .photo import fit_photo, image_to_array, is_portrait, load_photo

OVERLAP_FRAMES = 5  # segment k > 0 re-creates the anchor frame plus the 4 frames of the motion latent
NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class Progress:
    segment: int  # 0-based
    num_segments: int
    step: int  # 1-based
    num_steps: int


@dataclass
class SegmentResult:
    index: int
    prompt: str
    frames: np.ndarray  # (F, H, W, 3) uint8, only the frames this segment adds to the story
    carry: torch.Tensor  # on the CPU; svi-pro: z_k (16, T, h, w) normalised; last-frame: last frame (H, W, 3) uint8
    seconds: float


def check_inputs(prompts: list[str], settings: GenerationSettings, start_segment: int,
                 carry: torch.Tensor | None) -> None:
    settings.validate()
    if not prompts:
        raise EmptyPrompt("The story has no prompts; write at least one.")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise EmptyPrompt(f"Prompt {i + 1} of {len(prompts)} is empty: {p!r}")
    if len(prompts) > 1 and settings.num_frames <= OVERLAP_FRAMES:
        raise BadSetting(f"num_frames must be above {OVERLAP_FRAMES} for a story of several segments "
                         f"(each later segment drops its first {OVERLAP_FRAMES} frames) but is {settings.num_frames}")
    if not 0 <= start_segment < len(prompts):
        raise BadSetting(f"start_segment must be in [0, {len(prompts)}) but is {start_segment}")
    if start_segment > 0 and carry is None:
        raise BadSetting(f"resuming at segment {start_segment} needs the carry of segment {start_segment - 1}")


def check_carry(carry: torch.Tensor, settings: GenerationSettings) -> None:
    """The carry must fit the (already oriented) segment size."""
    h, w = settings.height // 8, settings.width // 8
    if settings.chaining == "svi-pro":
        expected = (16, settings.num_latent_frames, h, w)
    else:
        expected = (settings.height, settings.width, 3)
    if tuple(carry.shape) != expected:
        raise BadSetting(f"carry has shape {tuple(carry.shape)} but {settings.chaining} at these settings needs {expected}")


@torch.inference_mode()
def encode_prompts(models: Models, texts: list[str]) -> torch.Tensor:
    """UMT5 embeddings, zeroed past each prompt's length like Wan does: (N, L, text_dim)."""
    L = models.max_sequence_length
    tok = models.tokenizer(texts, padding="max_length", max_length=L, truncation=True,
                           add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    ids, mask = tok.input_ids.to(models.device), tok.attention_mask.to(models.device)
    hidden = models.text_encoder(ids, mask).last_hidden_state  # (N, L, text_dim)
    keep = mask.unsqueeze(-1).to(hidden.dtype)  # (N, L, 1)
    return (hidden * keep).to(models.dtype)


def latent_stats(models: Models, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = models.vae.config
    mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=device).view(cfg.z_dim, 1, 1, 1)
    std = torch.tensor(cfg.latents_std, dtype=torch.float32, device=device).view(cfg.z_dim, 1, 1, 1)
    return mean, std


@torch.inference_mode()
def encode_image(models: Models, image: np.ndarray) -> torch.Tensor:
    """normalize(VAE.encode(image)) as in WanImageToVideoPipeline.prepare_latents: (16, 1, h, w) fp32."""
    vae = models.vae
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).to(models.device)  # (H, W, 3) uint8
    x = x.permute(2, 0, 1).float().div(127.5).sub(1.0)  # (3, H, W) in [-1, 1]
    x = x[None, :, None].to(vae.dtype)  # (1, 3, 1, H, W)
    z = vae.encode(x).latent_dist.mode()[0].float()  # (16, 1, h, w)
    mean, std = latent_stats(models, z.device)
    return (z - mean) / std


@torch.inference_mode()
def decode_latents(models: Models, z: torch.Tensor) -> np.ndarray:
    """(16, T, h, w) normalised latents -> (F, H, W, 3) uint8 frames, F = 4(T-1)+1."""
    vae = models.vae
    mean, std = latent_stats(models, models.device)
    z = z.to(models.device) * std + mean  # undo the normalisation
    video = vae.decode(z[None].to(vae.dtype)).sample[0]  # (3, F, H, W) in [-1, 1]
    video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return video.permute(1, 2, 3, 0).cpu().numpy()  # (F, H, W, 3)


def build_condition(image_latent: torch.Tensor, motion_latent: torch.Tensor | None,
                    num_latent_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SVI 2.0 Pro conditioning for one segment: (cond (16, T, h, w), mask (4, T, h, w)).

    cond[:, 0] is the anchor (or, in last-frame mode, the encoded input frame); cond[:, 1] is the
    previous segment's last denoised latent when there is one; everything else is zero.
    Only latent 0 is marked known in the mask: the motion latent is a hint, not a constraint.
    """
    c, _, h, w = image_latent.shape
    cond = image_latent.new_zeros(c, num_latent_frames, h, w)  # (16, T, h, w)
    cond[:, 0] = image_latent[:, 0]
    if motion_latent is not None:
        cond[:, 1] = motion_latent.to(cond)  # (16, h, w): z_prev[:, -1]
    mask = image_latent.new_zeros(4, num_latent_frames, h, w)  # (4, T, h, w)
    mask[:, 0] = 1.0
    return cond, mask


def make_scheduler(settings: GenerationSettings):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=settings.shift)


def segment_timesteps(settings: GenerationSettings) -> torch.Tensor:
    scheduler = make_scheduler(settings)
    scheduler.set_timesteps(settings.num_inference_steps)
    return scheduler.timesteps


@torch.inference_mode()
def denoise(models: Models, cond: torch.Tensor, mask: torch.Tensor, prompt_embeds: torch.Tensor,
            negative_embeds: torch.Tensor | None, settings: GenerationSettings, seed: int,
            on_step: Callable[[int], None] | None = None,
            should_cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """Flow-matching Euler from pure noise to z (16, T, h, w), switching experts at the boundary."""
    device, dtype = models.device, models.dtype
    scheduler = make_scheduler(settings)  # fresh per segment: the scheduler keeps a step index
    scheduler.set_timesteps(settings.num_inference_steps, device=device)
    boundary = settings.boundary_ratio * NUM_TRAIN_TIMESTEPS
    # Noise from a CPU generator so a seed gives the same story on any device.
    generator = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn((1, *cond.shape), generator=generator, dtype=torch.float32).to(device)  # (1, 16, T, h, w)
    known = torch.cat([mask, cond], dim=0)[None].to(device, dtype)  # (1, 20, T, h, w)
    for i, t in enumerate(scheduler.timesteps):
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"cancelled before step {i + 1} of {len(scheduler.timesteps)}")
        expert = models.transformer if t >= boundary else models.transformer_2
        model_input = torch.cat([x.to(dtype), known], dim=1)  # (1, 36, T, h, w)
        timestep = t.expand(1)
        noise_pred = expert(hidden_states=model_input, timestep=timestep,
                            encoder_hidden_states=prompt_embeds, return_dict=False)[0]
        if negative_embeds is not None:
            noise_uncond = expert(hidden_states=model_input, timestep=timestep,
                                  encoder_hidden_states=negative_embeds, return_dict=False)[0]
            noise_pred = noise_uncond + settings.guidance_scale * (noise_pred - noise_uncond)
        x = scheduler.step(noise_pred.float(), t, x, return_dict=False)[0]  # (1, 16, T, h, w) fp32
        if on_step is not None:
            on_step(i + 1)
    return x[0]


def generate_story(
    models: Models,
    photo: bytes | Path,
    prompts: list[str],
    settings: GenerationSettings,
    *,
    start_segment: int = 0,
    carry: torch.Tensor | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_segment: Callable[[SegmentResult], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> list[SegmentResult]:
    """Generate segments `start_segment`.. of a story; each is handed to `on_segment` when done.

    Resuming at k with segment k-1's `carry` gives the same frames as an uninterrupted run.
    """
    # 1. Check inputs, before any weight is touched
    check_inputs(prompts, settings, start_segment, carry)
    image = load_photo(photo)
    settings = settings.oriented(is_portrait(image))
    if carry is not None:
        check_carry(carry, settings)
    photo_frame = image_to_array(fit_photo(image, settings.width, settings.height))  # (H, W, 3)
    num_segments = len(prompts)
    num_steps = settings.num_inference_steps

    # 2. Encode every prompt in one pass (plus the negative prompt when guidance needs it)
    use_negative = settings.guidance_scale > 1.0
    texts = list(prompts) + ([settings.negative_prompt] if use_negative else [])
    if models.text_cache is not None:  # re-rolls and repeated prompts skip the text encoder
        from .models.text_cache import encode_cached

        embeds = encode_cached(texts, models.text_cache, lambda missing: encode_prompts(models, missing))
        embeds = embeds.to(models.device, models.dtype)  # (N, L, text_dim)
    else:
        embeds = encode_prompts(models, texts)  # (N, L, text_dim)
    negative_embeds = embeds[-1:] if use_negative else None
    free_memory()
    models.ensure_placed()  # the first job places the experts only now, so the encoder had the whole GPU

    # 3. Encode the anchor once per story
    anchor = encode_image(models, photo_frame) if settings.chaining == "svi-pro" else None  # (16, 1, h, w)

    # 4. One segment per prompt
    results = []
    for k in range(start_segment, num_segments):
        started = time.perf_counter()
        if settings.chaining == "svi-pro":
            image_latent = anchor
            motion_latent = carry[:, -1] if k > 0 else None  # z_{k-1}[:, -1], never a re-encoded frame
        else:
            image_latent = encode_image(models, photo_frame if k == 0 else carry.cpu().numpy())
            motion_latent = None
        cond, mask = build_condition(image_latent, motion_latent, settings.num_latent_frames)

        def on_step(step: int, k: int = k) -> None:
            if on_progress is not None:
                on_progress(Progress(segment=k, num_segments=num_segments, step=step, num_steps=num_steps))

        z = denoise(models, cond, mask, embeds[k : k + 1], negative_embeds, settings,
                    seed=settings.seed + k, on_step=on_step, should_cancel=should_cancel)  # (16, T, h, w)
        frames = decode_latents(models, z)  # (F, H, W, 3)
        if settings.chaining == "svi-pro":
            carry = z.cpu()
        else:
            carry = torch.from_numpy(frames[-1].copy())  # (H, W, 3) uint8
        if k > 0:
            frames = frames[OVERLAP_FRAMES:]
        result = SegmentResult(index=k, prompt=prompts[k], frames=frames, carry=carry,
                               seconds=time.perf_counter() - started)
        del z, cond, mask
        free_memory()
        results.append(result)
        if on_segment is not None:
            on_segment(result)
    return results
