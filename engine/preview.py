"""Live previews: the sampler's current guess of the clean latent, shown as a small RGB strip
without a VAE decode.

A fixed linear map takes each latent pixel's 16 channels to RGB. The factors and bias are the ones
ComfyUI publishes for the Wan 2.1 VAE latent space (comfyanonymous/ComfyUI, comfy/latent_formats.py,
class Wan21, `latent_rgb_factors` / `latent_rgb_factors_bias`), applied as its `Latent2RGBPreviewer`
does (latent_preview.py): `linear(x0, factors.T, bias)`, clamp to [-1, 1], then (v + 1) * 127.5.
Wan 2.2 A14B uses the Wan 2.1 VAE, and the sampler works in the same normalised latent space.
"""
from __future__ import annotations

import io

import torch
from PIL import Image

WAN21_LATENT_RGB_FACTORS = (  # 16 latent channels x (R, G, B)
    (-0.1299, -0.1692, 0.2932),
    (0.0671, 0.0406, 0.0442),
    (0.3568, 0.2548, 0.1747),
    (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328),
    (0.0296, -0.0956, -0.0665),
    (-0.3477, -0.4059, -0.2925),
    (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364),
    (-0.1293, 0.0740, 0.1636),
    (0.0680, 0.3019, 0.1128),
    (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699),
    (0.0060, -0.0633, 0.0005),
    (0.3477, 0.2275, 0.2950),
    (0.1984, 0.0913, 0.1861),
)
WAN21_LATENT_RGB_BIAS = (-0.1835, -0.0868, -0.3360)
PREVIEW_FRAMES = 4  # latent frames shown side by side, spread over the segment
PREVIEW_HEIGHT = 96  # pixels; each frame is scaled to this height


def predicted_x0(x_t: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """Flow matching: x_t = (1 - sigma) x0 + sigma * noise and v = noise - x0, so x0 = x_t - sigma * v."""
    return x_t - sigma * velocity


def latent_to_rgb(x0: torch.Tensor) -> torch.Tensor:
    """(16, T, h, w) latent -> (T, h, w, 3) uint8 through the fixed Wan 2.1 projection."""
    factors = torch.tensor(WAN21_LATENT_RGB_FACTORS, dtype=torch.float32)  # (16, 3)
    bias = torch.tensor(WAN21_LATENT_RGB_BIAS, dtype=torch.float32)  # (3,)
    rgb = torch.nn.functional.linear(x0.detach().float().cpu().movedim(0, -1), factors.T, bias)  # (T, h, w, 3)
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def preview_strip(x0: torch.Tensor, frames: int = PREVIEW_FRAMES, height: int = PREVIEW_HEIGHT) -> Image.Image:
    """Up to `frames` latent frames of (16, T, h, w), evenly spread, side by side at `height` px."""
    if x0.ndim != 4 or x0.shape[0] != len(WAN21_LATENT_RGB_FACTORS):
        raise ValueError(f"a preview needs a (16, T, h, w) latent, not shape {tuple(x0.shape)}")
    t = x0.shape[1]
    k = min(frames, t)
    picks = [round(i * (t - 1) / max(1, k - 1)) for i in range(k)]  # first and last frame included
    rgb = latent_to_rgb(x0[:, picks])  # (k, h, w, 3)
    h, w = rgb.shape[1:3]
    width = max(1, round(w * height / h))
    tiles = [Image.fromarray(f.numpy()).resize((width, height), Image.NEAREST) for f in rgb]
    strip = Image.new("RGB", (width * len(tiles), height))
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * width, 0))
    return strip


def preview_jpeg(x0: torch.Tensor, quality: int = 80) -> bytes:
    """The strip as JPEG bytes (a few KB: small enough to ride in a progress event)."""
    buf = io.BytesIO()
    preview_strip(x0).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
