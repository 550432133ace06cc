"""FP8 (e4m3) linears with per-output-channel weight scales and per-token activation scales.

A weight W (out, in) is held as q = round_e4m3(W / s) with s = amax(|W[o, :]|) / 448 per output row, so
each row uses the format's whole range. The activation x (tokens, in) is quantized per token the same
way at every call, and `torch._scaled_mm` multiplies the two on FP8 tensor cores (sm_89 and newer),
applying both scales in its epilogue. That is the row-wise scaling torchao calls `PerRow`.

Error bound of one weight value (e4m3: 3 mantissa bits, smallest normal 2^-6, subnormal step 2^-9):
|W - s q| <= max(2^-4 |W|, 2^-10 s). The per-linear output error on random data is about 3-4%; the
engine checks whole forwards against the GGUF path instead (bench/fastpath.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
TINY = 1e-12  # scale floor, so an all-zero row or token divides by something


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> (q (out, in) e4m3, scale (out, 1) fp32) with w ~= q * scale."""
    w = w.float()
    scale = w.abs().amax(dim=1, keepdim=True).clamp_min(TINY) / FP8_MAX  # (out, 1)
    q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(out, in) e4m3 and (out, 1) scales -> (out, in) fp32."""
    return q.float() * scale


def error_bound(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Largest |w - dequantize(quantize(w))| the format allows, per value: (out, in)."""
    return torch.maximum(w.float().abs() * 2.0**-4, scale * 2.0**-10)


def scaled_mm_works(device: torch.device) -> str | None:
    """None if row-wise scaled FP8 matmuls run on `device`, else why not."""
    if device.type != "cuda":
        return "no CUDA device"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"sm_{major}{minor} has no FP8 tensor cores (sm_89 and newer do)"
    try:
        a = torch.randn(32, 64, device=device)
        b = torch.randn(48, 64, device=device)
        qa, sa = quantize_rows(a)
        qb, sb = quantize_rows(b)
        out = torch._scaled_mm(qa, qb.t(), scale_a=sa, scale_b=sb.t(), out_dtype=torch.bfloat16)
        ref = (dequantize_rows(qa, sa) @ dequantize_rows(qb, sb).t())
        if not torch.allclose(out.float(), ref, rtol=2e-2, atol=1e-2):
            return "torch._scaled_mm gave wrong results in a probe"
    except (RuntimeError, TypeError) as err:
        return f"torch._scaled_mm with row-wise scales failed: {str(err).splitlines()[0][:160]}"
    return None


class Fp8Linear(nn.Module):
    """y = (x W^T) + b with W in e4m3 and row scales; x per-token quantized at each call.

    On a device without FP8 matmuls (the CPU in tests) it computes the same quantized product in fp32.
    """

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.compute_dtype = compute_dtype
        self.register_buffer("weight", weight)  # (out, in) e4m3
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())  # (1, out) fp32: scale_b's layout
        self.register_buffer("bias", bias)  # (out,) compute dtype or None

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None, compute_dtype: torch.dtype) -> "Fp8Linear":
        q, scale = quantize_rows(weight)
        return cls(q, scale, None if bias is None else bias.to(compute_dtype), compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (tokens, in)
        xs = x2.abs().amax(dim=1, keepdim=True).float().clamp_min(TINY) / FP8_MAX  # (tokens, 1)
        xq = (x2.float() / xs).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        if x2.is_cuda:
            # row-wise scaling wants a bf16 output; fp16 models cast back below
            y = torch._scaled_mm(xq, self.weight.t(), scale_a=xs, scale_b=self.weight_scale,
                                 out_dtype=torch.bfloat16)
        else:
            y = (xq.float() * xs) @ (self.weight.float() * self.weight_scale.t()).t()
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 per-row"


def fp8_bytes(out_features: int, in_features: int, bias: bool, dtype: torch.dtype) -> int:
    """Bytes an Fp8Linear of this shape holds: the e4m3 weight, fp32 scales, the bias in `dtype`."""
    return out_features * in_features + out_features * 4 + (out_features * dtype.itemsize if bias else 0)


def convertible(linear: nn.Module) -> bool:
    """FP8 matmuls need both dimensions divisible by 16."""
    return linear.in_features % 16 == 0 and linear.out_features % 16 == 0


def dense_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The unquantized product the FP8 linear approximates (fp32)."""
    return F.linear(x.float(), weight.float(), None if bias is None else bias.float())
