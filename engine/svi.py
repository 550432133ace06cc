"""SVI 2.0 Pro story generation: one Wan 2.2 I2V segment per prompt, chained by latent carry-over.

`generate_story` reads top to bottom like the SVI 2.0 Pro pipeline: weight the adapters for the job's recipe,
anchor once, then per segment build the conditioning, denoise with the high- then low-noise expert
(engine.sampling), decode and drop the seam. `last-frame` chaining is plain Wan 2.2 I2V from the previous
segment's last frame instead. A `loop` story's last segment also ends on the photo; `color_match` keeps later
segments on the photo's colours.
"""
from __future__ import annotations

import html
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from storage.errors import BadSetting, EmptyPrompt

from .color import lab_stats, match_colors
from .config import GenerationSettings
from .models.loading import Models, free_memory
from .models.lora import set_strengths
from .photo import fit_photo, image_to_array, is_portrait, load_photo
from .preview import preview_jpeg
from .sampling import denoise


@dataclass(frozen=True)
class Progress:
    segment: int  # 0-based
    num_segments: int
    step: int  # 1-based
    num_steps: int
    # With previews on: renders this step's preview strip (JPEG bytes) when called, so steps whose
    # progress is not reported cost nothing.
    preview: Callable[[], bytes] | None = None


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
        if not isinstance(p, str) or not clean_prompt(p):
            raise EmptyPrompt(f"Prompt {i + 1} of {len(prompts)} is empty: {p!r}")
    seam = settings.seam_frames
    if len(prompts) > 1 and settings.num_frames <= seam:
        raise BadSetting(f"num_frames must be above {seam} for a story of several segments "
                         f"(each later segment drops its first {seam} frames) but is {settings.num_frames}")
    kept = settings.num_frames - (seam if len(prompts) > 1 else 0) - settings.loop_tail_frames
    if settings.loop and kept < 1:
        raise BadSetting(f"num_frames must be above {settings.num_frames - kept} for a loop of {len(prompts)} "
                         f"segment(s) ({settings.chaining} drops {settings.loop_tail_frames} frame(s) at the end "
                         f"of the last one) but is {settings.num_frames}")
    if not 0 <= start_segment < len(prompts):
        raise BadSetting(f"start_segment must be in [0, {len(prompts)}) but is {start_segment}")
    if start_segment > 0 and carry is None:
        raise BadSetting(f"resuming at segment {start_segment} needs the carry of segment {start_segment - 1}")


def check_models(models: Models, settings: GenerationSettings) -> None:
    """svi-pro chaining on real weights needs the SVI LoRA loaded (random-weight presets only exercise the path)."""
    if settings.chaining == "svi-pro" and not models.is_random_weights and "svi" not in models.adapters:
        raise BadSetting(f"svi-pro chaining needs the SVI LoRA, but preset {models.preset} was loaded without it; "
                         "use chaining last-frame for plain Wan 2.2")


def check_carry(carry: torch.Tensor, settings: GenerationSettings) -> None:
    """The carry must fit the (already oriented) segment size."""
    h, w = settings.height // 8, settings.width // 8
    if settings.chaining == "svi-pro":
        expected = (16, settings.num_latent_frames, h, w)
    else:
        expected = (settings.height, settings.width, 3)
    if tuple(carry.shape) != expected:
        raise BadSetting(f"carry has shape {tuple(carry.shape)} but {settings.chaining} at these settings needs {expected}")


def clean_prompt(text: str) -> str:
    """Prompt text as Wan and diffusers feed it to UMT5: ftfy, HTML unescaped twice, whitespace collapsed.

    Same steps as `basic_clean` + `whitespace_clean` in Wan-Video/Wan2.2 wan/modules/tokenizers.py, diffusers'
    pipelines/wan/pipeline_wan_i2v.py `prompt_clean`, and SVI's diffsynth/models/wan_video_text_encoder.py.
    """
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


@torch.inference_mode()
def encode_prompts(models: Models, texts: list[str]) -> torch.Tensor:
    """UMT5 embeddings of already cleaned texts, zeroed past each prompt's length like Wan does: (N, L, text_dim)."""
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
def encode_video(models: Models, video: torch.Tensor) -> torch.Tensor:
    """normalize(VAE.encode(video)) as in WanImageToVideoPipeline.prepare_latents (posterior mode):
    (3, F, H, W) in [-1, 1] -> (16, (F - 1) // 4 + 1, h, w) fp32."""
    vae = models.vae
    z = vae.encode(video[None].to(models.device, vae.dtype)).latent_dist.mode()[0].float()  # (16, T, h, w)
    mean, std = latent_stats(models, z.device)
    return (z - mean) * (1.0 / std)


def frame_to_video(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, 1, H, W) fp32 in [-1, 1]."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8))  # (H, W, 3)
    return x.permute(2, 0, 1).float().div(127.5).sub(1.0)[:, None]  # (3, 1, H, W)


def encode_image(models: Models, image: np.ndarray) -> torch.Tensor:
    """One frame through the VAE on its own, as SVI 2.0 Pro encodes its anchor: (16, 1, h, w) fp32."""
    return encode_video(models, frame_to_video(image))


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
                    num_latent_frames: int,
                    end_latent: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SVI 2.0 Pro conditioning for one segment: (cond (16, T, h, w), mask (4, T, h, w)).

    cond[:, 0] is the anchor; cond[:, 1] is the previous segment's last denoised latent when there is one;
    everything else is zero latents (vita-epfl/Stable-Video-Infinity svi_wan22,
    diffsynth/pipelines/wan_video_svi_pro.py: `y = concat([anchor_latent, motion_latent, padding])`).
    Only latent 0 is marked known in the mask: the motion latent is a hint, not a constraint.

    `end_latent` (16, 1, h, w), the last segment of a loop: it fills the final latent and all 4 frames of that
    latent are marked known, the layout ComfyUI-WanVideoWrapper's WanVideoImageToVideoEncode gives an end image
    encoded on its own for the non-FLF2V Wan I2V models (the end frame's mask repeated 4 times).
    """
    c, _, h, w = image_latent.shape
    cond = image_latent.new_zeros(c, num_latent_frames, h, w)  # (16, T, h, w)
    cond[:, 0] = image_latent[:, 0]
    if motion_latent is not None:
        cond[:, 1] = motion_latent.to(cond)  # (16, h, w): z_prev[:, -1]
    mask = first_frame_mask(num_latent_frames, h, w, image_latent)
    if end_latent is not None:
        cond[:, -1] = end_latent[:, 0].to(cond)
        mask[:, -1] = 1.0
    return cond, mask


def first_frame_mask(num_latent_frames: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Wan's I2V mask, (4, T, h, w): the 4 frames packed into latent 0 are known, nothing else."""
    mask = like.new_zeros(4, num_latent_frames, h, w)
    mask[:, 0] = 1.0
    return mask


def frame_mask(num_frames: int, h: int, w: int, like: torch.Tensor, last_known: bool) -> torch.Tensor:
    """Wan's I2V mask from the known frames, (4, T, h, w), as diffusers' WanImageToVideoPipeline.prepare_latents
    builds it: frame 0 counts 4 times (it fills latent 0 alone), then every latent packs 4 frames; with
    `last_known` only the last of the final latent's 4 frames is marked."""
    known = like.new_zeros(num_frames + 3)  # frame 0 four times, then frames 1 .. F-1: 4T entries
    known[:4] = 1.0
    if last_known:
        known[-1] = 1.0
    T = (num_frames - 1) // 4 + 1
    return known.view(T, 4).T[:, :, None, None].expand(4, T, h, w).contiguous()


def wan_condition(models: Models, frame: np.ndarray, num_frames: int,
                  last_frame: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain Wan 2.2 I2V conditioning: (cond (16, T, h, w), mask (4, T, h, w)).

    The VAE encodes the video [frame, black x (F - 1)] (zeros in [-1, 1], i.e. mid-grey), as Wan-Video/Wan2.2
    wan/image2video.py and diffusers' WanImageToVideoPipeline.prepare_latents do; zero latents instead are
    what the SVI 2.0 Pro LoRA was trained with (docs/svi/svi_2.0_pro.md), not plain Wan.
    With `last_frame` (a loop's end) the video is [frame, black x (F - 2), last_frame], as diffusers'
    `last_image` builds it.
    """
    first = frame_to_video(frame).to(models.device, models.vae.dtype)  # (3, 1, H, W)
    # built where the VAE runs: 81 frames at 480p are ~0.4 GB in fp32 on the host
    parts = [first, first.new_zeros(3, num_frames - 1 - (last_frame is not None), *first.shape[2:])]
    if last_frame is not None:
        parts.append(frame_to_video(last_frame).to(first))
    cond = encode_video(models, torch.cat(parts, dim=1))  # (3, F, H, W) -> (16, T, h, w)
    _, T, h, w = cond.shape
    return cond, frame_mask(num_frames, h, w, cond, last_known=last_frame is not None)


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
    previews: bool = False,
) -> list[SegmentResult]:
    """Generate segments `start_segment`.. of a story; each is handed to `on_segment` when done.

    Resuming at k with segment k-1's `carry` gives the same frames as an uninterrupted run.
    """
    # 1. Check inputs, before any weight is touched
    check_inputs(prompts, settings, start_segment, carry)
    check_models(models, settings)
    image = load_photo(photo)
    settings = settings.oriented(is_portrait(image))
    if carry is not None:
        check_carry(carry, settings)
    photo_frame = image_to_array(fit_photo(image, settings.width, settings.height))  # (H, W, 3)
    num_segments = len(prompts)
    num_steps = settings.num_inference_steps

    # 2. Encode every prompt in one pass (plus the negative prompt when guidance needs it), cleaned first
    use_negative = settings.uses_guidance
    texts = [clean_prompt(p) for p in prompts] + ([clean_prompt(settings.negative_prompt)] if use_negative else [])
    if models.text_cache is not None:  # re-rolls and repeated prompts skip the text encoder
        from .models.text_cache import encode_cached

        embeds = encode_cached(texts, models.text_cache, lambda missing: encode_prompts(models, missing))
        embeds = embeds.to(models.device, models.dtype)  # (N, L, text_dim)
    else:
        embeds = encode_prompts(models, texts)  # (N, L, text_dim)
    negative_embeds = embeds[-1:] if use_negative else None
    free_memory()
    models.ensure_placed()  # the first job places the experts only now, so the encoder had the whole GPU
    # 3. This job's adapter strengths: a `quality` job runs LightX2V at 0, the next `fast` job at its recipe's
    set_strengths(models, settings.lora_strengths)

    # 4. Encode the anchor once per story, and measure its colours when later segments are matched to them
    anchor = encode_image(models, photo_frame) if settings.chaining == "svi-pro" else None  # (16, 1, h, w)
    anchor_colors = lab_stats(photo_frame[None], models.device) if settings.color_match == "anchor" else None

    # 5. One segment per prompt
    results = []
    for k in range(start_segment, num_segments):
        started = time.perf_counter()
        loop_end = settings.loop and k == num_segments - 1  # a loop's last segment returns to the photo
        if settings.chaining == "svi-pro":
            motion_latent = carry[:, -1] if k > 0 else None  # z_{k-1}[:, -1], never a re-encoded frame
            cond, mask = build_condition(anchor, motion_latent, settings.num_latent_frames,
                                         end_latent=anchor if loop_end else None)
        else:
            frame = photo_frame if k == 0 else carry.cpu().numpy()  # (H, W, 3) uint8
            cond, mask = wan_condition(models, frame, settings.num_frames,
                                       last_frame=photo_frame if loop_end else None)
        if loop_end and settings.loop_strength != 1.0:
            # a weaker end latent loosens the lock on the photo (WanVideoWrapper's end_latent_strength)
            cond = torch.cat([cond[:, :-1], cond[:, -1:] * settings.loop_strength], dim=1)  # (16, T, h, w)

        def on_step(step: int, k: int = k) -> None:
            if on_progress is not None:
                on_progress(Progress(segment=k, num_segments=num_segments, step=step, num_steps=num_steps))

        def on_x0(step: int, x0: Callable[[], torch.Tensor], k: int = k) -> None:
            if on_progress is not None:
                on_progress(Progress(segment=k, num_segments=num_segments, step=step, num_steps=num_steps,
                                     preview=lambda: preview_jpeg(x0())))

        z = denoise(models, cond, mask, embeds[k : k + 1], negative_embeds, settings,
                    seed=settings.seed + k, on_step=None if previews else on_step, should_cancel=should_cancel,
                    on_x0=on_x0 if previews else None)  # (16, T, h, w)
        frames = decode_latents(models, z)  # (F, H, W, 3)
        # the frames this segment adds: not those repeating what the story already shows (the seam), nor
        # those of a loop's end that repeat the first frame
        tail = settings.loop_tail_frames if loop_end else 0
        keep = slice(settings.seam_frames if k > 0 else 0, len(frames) - tail)
        if anchor_colors is not None and k > 0:  # fitted on the added frames, applied to all (the carry too)
            added = lab_stats(frames[keep], models.device)
            frames = match_colors(frames, anchor_colors, models.device, source=added)
        if settings.chaining == "svi-pro":
            carry = z.cpu()
        else:
            carry = torch.from_numpy(frames[-1].copy())  # (H, W, 3) uint8
        frames = frames[keep]
        result = SegmentResult(index=k, prompt=prompts[k], frames=frames, carry=carry,
                               seconds=time.perf_counter() - started)
        del z, cond, mask
        free_memory()
        results.append(result)
        if on_segment is not None:
            on_segment(result)
    return results
