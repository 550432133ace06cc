"""Seam colour matching: move a segment's colour statistics onto the anchor photo's, in CIELAB.

Long chains drift in colour (SVI's pinned issue #51 names it; it is the second most reported SVI problem after
seams). With `color_match: anchor`, each later segment gets one affine map per Lab channel,
`(x - mean_seg) * std_photo / std_seg + mean_photo` (Reinhard et al., "Color Transfer between Images", 2001,
with CIELAB as the perceptual space), fitted over all frames the segment adds, so the map does not flicker.

No dependency of svibot ships a float sRGB <-> Lab conversion (Pillow's ImageCms works in 8-bit Lab), so it is
written out here: the sRGB transfer curve and D65 primaries of IEC 61966-2-1 and the CIE 1976 L*a*b* formulas.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# linear sRGB -> XYZ, D65 (IEC 61966-2-1 primaries, at the precision Bruce Lindbloom's tables give)
RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                           [0.2126729, 0.7151522, 0.0721750],
                           [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
WHITE = RGB_TO_XYZ.sum(dim=1)  # XYZ of sRGB white (D65): (0.95047, 1.0, 1.08883), so white is a* = b* = 0
DELTA = 6.0 / 29.0  # where the CIE Lab curve turns from a cube root into a line
CHUNK_PIXELS = 1 << 21  # ~5 frames of 480p at a time (~25 MB per fp32 Lab tensor): 81 frames at once would be
# ~0.4 GB each, next to experts that may fill the GPU
MIN_STD = 1e-3  # a flat channel (std ~ 0) keeps its values instead of being blown up


@dataclass(frozen=True)
class ColorStats:
    """Per-channel mean and standard deviation of L*, a*, b* over every pixel of some frames."""

    mean: torch.Tensor  # (3,) float64
    std: torch.Tensor  # (3,) float64


def srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) sRGB in [0, 1] -> (..., 3) L*a*b* (L* in [0, 100])."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ (RGB_TO_XYZ / WHITE[:, None]).T.to(rgb)  # (..., 3), relative to the white point
    f = torch.where(xyz > DELTA**3, xyz.clamp_min(DELTA**3) ** (1.0 / 3.0), xyz / (3 * DELTA**2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(-1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-1)


def lab_to_srgb(lab: torch.Tensor) -> torch.Tensor:
    """(..., 3) L*a*b* -> (..., 3) sRGB, clipped to [0, 1] (matched colours can leave the sRGB gamut)."""
    L, a, b = lab.unbind(-1)
    fy = (L + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=-1)
    xyz = torch.where(f > DELTA, f**3, 3 * DELTA**2 * (f - 4.0 / 29.0))  # relative to the white point
    to_rgb = torch.linalg.inv(RGB_TO_XYZ / WHITE[:, None]).T.to(lab)
    linear = (xyz @ to_rgb).clamp(0.0, 1.0)
    return torch.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1.0 / 2.4) - 0.055)


def _chunks(frames: np.ndarray):
    """Slices of whole frames, each at most about CHUNK_PIXELS pixels."""
    step = max(1, CHUNK_PIXELS // max(1, frames.shape[1] * frames.shape[2]))
    for start in range(0, len(frames), step):
        yield slice(start, start + step)


def _to_lab(frames: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, H, W, 3) fp32 Lab on `device`."""
    return srgb_to_lab(torch.from_numpy(np.array(frames)).to(device).float() / 255.0)  # a copy: frames may be read-only


@torch.inference_mode()
def lab_stats(frames: np.ndarray, device: torch.device | str = "cpu") -> ColorStats:
    """Mean and spread of L*, a*, b* over all pixels of (F, H, W, 3) uint8 frames."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for part in _chunks(frames):
        lab = _to_lab(frames[part], device).reshape(-1, 3).double()  # (N, 3)
        total += lab.sum(0).cpu()
        squares += (lab * lab).sum(0).cpu()
    n = frames.shape[0] * frames.shape[1] * frames.shape[2]
    mean = total / n
    return ColorStats(mean=mean, std=(squares / n - mean * mean).clamp_min(0.0).sqrt())


@torch.inference_mode()
def match_colors(frames: np.ndarray, target: ColorStats, device: torch.device | str = "cpu",
                 source: ColorStats | None = None) -> np.ndarray:
    """(F, H, W, 3) uint8 frames whose Lab statistics (`source`, measured on `frames` when not given) are
    mapped onto `target`'s; returns new (F, H, W, 3) uint8 frames."""
    source = source or lab_stats(frames, device)
    scale = (target.std / source.std.clamp_min(MIN_STD)).float().to(device)  # (3,)
    shift = (target.mean - source.mean * target.std / source.std.clamp_min(MIN_STD)).float().to(device)
    out = np.empty_like(frames)
    for part in _chunks(frames):
        lab = _to_lab(frames[part], device) * scale + shift  # (f, H, W, 3)
        out[part] = (lab_to_srgb(lab) * 255.0).round().to(torch.uint8).cpu().numpy()
    return out
