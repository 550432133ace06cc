"""K-quant encoders in torch (GPU), to measure what GGUF quantization itself costs at full size.

The output target compares the engine's LoRA-carrying forward with an fp32 reference (dequantized W
plus s*B*A). The bar is the error the file's own quantization formats have on those weights: the
reference weights quantized again to each tensor's type and decoded (what merging the LoRAs into the
GGUF file would give). Layouts follow ggml's block_q3_K, block_q4_K and block_q6_K, decoded by
diffusers' `dequantize_gguf_tensor`; `tests`-style checks live in `check()`.
"""
from __future__ import annotations

import torch

QK_K = 256


def _f16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float32)


def _div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den == 0, torch.zeros_like(num), num / torch.where(den == 0, torch.ones_like(den), den))


def _bytes(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.uint8)


def quantize_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    """(n, 256) fp32 -> (n, 144) uint8: d, dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles."""
    n = blocks.shape[0]
    sub = blocks.reshape(n, 8, 32)
    lo = sub.amin(-1).clamp(max=0.0)
    scale, mn = (sub.amax(-1) - lo) / 15.0, -lo  # (n, 8)
    d, dmin = _f16(scale.amax(-1, keepdim=True) / 63.0), _f16(mn.amax(-1, keepdim=True) / 63.0)
    sc = _div(scale, d).round().clamp(0, 63).to(torch.uint8)
    m = _div(mn, dmin).round().clamp(0, 63).to(torch.uint8)
    q = _div(sub + (dmin * m)[..., None], (d * sc)[..., None]).round().clamp(0, 15).to(torch.uint8)
    scales = torch.empty(n, 12, dtype=torch.uint8, device=blocks.device)
    scales[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    q = q.reshape(n, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, 128)
    head = _bytes(torch.cat([d, dmin], 1).to(torch.float16))  # (n, 4)
    return torch.cat([head, scales, qs], 1)


def quantize_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """(n, 256) fp32 -> (n, 210) uint8: 128 bytes low nibbles, 64 bytes high 2 bits, 16 int8 scales, d."""
    n = blocks.shape[0]
    sub = blocks.reshape(n, 16, 16)
    scale = sub.abs().amax(-1) / 31.0
    d = _f16(scale.amax(-1, keepdim=True) / 127.0)
    sc = _div(scale, d).round().clamp(-128, 127)
    q = (_div(sub, (d * sc)[..., None]).round().clamp(-32, 31) + 32).to(torch.uint8).reshape(n, QK_K)
    low = (q & 0x0F).reshape(n, 2, 2, 64)
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    high = (q >> 4).reshape(n, 2, 4, 32)
    qh = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)).reshape(n, 64)
    return torch.cat([ql, qh, _bytes(sc.to(torch.int8)), _bytes(d.to(torch.float16))], 1)


def quantize_q3_k(blocks: torch.Tensor) -> torch.Tensor:
    """(n, 256) fp32 -> (n, 110) uint8: 32 bytes high bits, 64 bytes low 2 bits, 12 bytes of scales, d.

    Each 16-value sub-block j decodes as d * (sc[j] - 32) * q with q in [-4, 3].
    """
    n = blocks.shape[0]
    sub = blocks.reshape(n, 16, 16)
    scale = sub.abs().amax(-1) / 4.0  # (n, 16)
    d = _f16(scale.amax(-1, keepdim=True) / 31.0)
    sc = _div(scale, d).round().clamp(-32, 31)  # stored + 32
    q = _div(sub, (d * sc)[..., None]).round().clamp(-4, 3)
    q = (q + 4).to(torch.uint8).reshape(n, QK_K)  # 0..7: low 2 bits in qs, bit 2 in hmask
    low = (q & 3).reshape(n, 2, 4, 32)  # value index = half*128 + shift*32 + l
    qs = (low[:, :, 0] | (low[:, :, 1] << 2) | (low[:, :, 2] << 4) | (low[:, :, 3] << 6)).reshape(n, 64)
    hi = (q >> 2).reshape(n, 8, 32)  # value index = bit*32 + l
    hmask = torch.zeros(n, 32, dtype=torch.uint8, device=blocks.device)
    for bit in range(8):
        hmask |= hi[:, bit] << bit
    s = (sc + 32).to(torch.uint8)  # (n, 16) in 0..63
    scales = torch.empty(n, 12, dtype=torch.uint8, device=blocks.device)
    scales[:, 0:8] = (s[:, :8] & 0x0F) | ((s[:, 8:] & 0x0F) << 4)
    hs = (s >> 4).reshape(n, 4, 4)  # scale index = shift*4 + byte
    scales[:, 8:12] = hs[:, 0] | (hs[:, 1] << 2) | (hs[:, 2] << 4) | (hs[:, 3] << 6)
    return torch.cat([hmask, qs, scales, _bytes(d.to(torch.float16))], 1)


def requantize(weight: torch.Tensor, quant_type) -> torch.Tensor:
    """fp32 (out, in) -> GGUF bytes (out, in / 256 * type_size) in `quant_type` (Q3_K, Q4_K or Q6_K)."""
    import gguf

    enc = {gguf.GGMLQuantizationType.Q3_K: quantize_q3_k, gguf.GGMLQuantizationType.Q4_K: quantize_q4_k,
           gguf.GGMLQuantizationType.Q6_K: quantize_q6_k}[gguf.GGMLQuantizationType(quant_type)]
    out, cols = weight.shape
    return enc(weight.float().reshape(-1, QK_K)).reshape(out, -1)


def check(device: str = "cpu") -> dict:
    """Round trips through diffusers' decoder: relative error of each format on Gaussian weights."""
    import gguf
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    g = torch.Generator(device).manual_seed(0)
    w = torch.randn(64, 1024, generator=g, device=device) * 0.02
    out = {}
    for qt in (gguf.GGMLQuantizationType.Q3_K, gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K):
        back = dequantize_gguf_tensor(GGUFParameter(requantize(w, qt), quant_type=qt)).float()
        out[qt.name] = ((back - w).norm() / w.norm()).item()
    return out
