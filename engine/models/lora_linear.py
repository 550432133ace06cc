"""LoRAs applied on the weight side of a (GGUF or plain) linear: y = x (W + sum_i s_i B_i A_i)^T + b.

PEFT's unfused LoRA runs a second, activation-sized product per adapter (x A^T B^T): at 32,760 tokens
that is memory traffic on tensors as large as the activations, every layer, every step. A quantized
linear dequantizes W for every call anyway, so adding s_i B_i A_i to that temporary costs one
(out x r) by (r x in) product, about 0.3% of a Wan A14B forward, and the matmul stays one matmul.
Several LoRAs on one linear are one product over their concatenated ranks; each rank carries its
adapter's strength (times alpha/rank) in `lora_scale`, so a strength change is a write into that
small buffer wherever the block lives (VRAM or pinned RAM), never a reload.

Factors attach as views of the mapped LoRA files and are materialized (concatenated, cast to the
compute dtype) block by block when the block is placed, so no LoRA sits in anonymous host memory
before the planner has decided where it goes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.gguf_plain import dequantized_weight


@dataclass
class Adapter:
    """One LoRA on one linear: its slice of the concatenated ranks and its weighting."""

    name: str
    start: int  # first rank of this adapter in lora_down/lora_up
    rank: int
    alpha_scale: float  # alpha / rank from the file (1.0 without alpha)
    strength: float = 1.0


class LoraLinear(nn.Module):
    """Wraps `base` (nn.Linear or diffusers' GGUFLinear); named like PEFT's wrapper (`base_layer`)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base
        self.adapters: list[Adapter] = []
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []  # (down, up, bias) views
        self.register_buffer("lora_down", None)  # (R, in): the A factors of every adapter, stacked
        self.register_buffer("lora_up", None)  # (out, R): the B factors, side by side
        self.register_buffer("lora_scale", None)  # (R,) fp32: strength * alpha/rank per rank
        self.register_buffer("lora_bias", None)  # (n_adapters, out) or None: LoRA bias deltas (`diff_b`)
        self.register_buffer("lora_bias_scale", None)  # (n_adapters,) fp32
        self._ranks = (0, 0)  # [lo, hi) of the ranks with a nonzero strength; empty: base only

    # -- what the rest of the model sees ------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def compute_dtype(self) -> torch.dtype:
        dtype = getattr(self.base_layer, "compute_dtype", None)
        return dtype if dtype is not None else self.base_layer.weight.dtype

    @property
    def total_rank(self) -> int:
        return sum(a.rank for a in self.adapters)

    def lora_nbytes(self, dtype: torch.dtype) -> int:
        """Bytes of the LoRA buffers once materialized with factors in `dtype` (pending ones included)."""
        r, n = self.total_rank, len(self.adapters)
        has_bias = self.lora_bias is not None or any(b is not None for _, _, b in self._pending)
        return (r * (self.in_features + self.out_features) * dtype.itemsize + r * 4
                + (n * self.out_features * dtype.itemsize + n * 4 if has_bias else 0))

    # -- attaching and weighting ----------------------------------------------------------------------
    def add_adapter(self, name: str, down: torch.Tensor, up: torch.Tensor, bias: torch.Tensor | None,
                    alpha_scale: float, strength: float = 1.0) -> None:
        """Attach one LoRA (A: (r, in), B: (out, r)); the tensors may be views of a mapped file."""
        if any(a.name == name for a in self.adapters):
            raise ValueError(f"adapter {name!r} is already attached")
        self.adapters.append(Adapter(name, self.total_rank, down.shape[0], float(alpha_scale), float(strength)))
        self._pending.append((down, up, bias))

    def materialize(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> list:
        """Stack pending factors into the LoRA buffers in `dtype`; returns the source views it read.

        Called per block at placement (so the caller can drop the sources' file pages), or at the
        first forward of a model that is never placed.
        """
        if not self._pending:
            return []
        dtype = dtype or self.compute_dtype
        device = device or self.base_layer.weight.device
        done = self.adapters[: len(self.adapters) - len(self._pending)]
        downs = ([self.lora_down] if done else []) + [d for d, _, _ in self._pending]
        ups = ([self.lora_up] if done else []) + [u for _, u, _ in self._pending]
        self.lora_down = torch.cat([d.to(device, dtype) for d in downs])  # (R, in)
        self.lora_up = torch.cat([u.to(device, dtype) for u in ups], dim=1)  # (out, R)
        biases = [b for _, _, b in self._pending]
        if self.lora_bias is not None or any(b is not None for b in biases):
            old = list(self.lora_bias) if self.lora_bias is not None else [None] * len(done)
            rows = [b.to(device, dtype) if b is not None else torch.zeros(self.out_features, device=device, dtype=dtype)
                    for b in old + biases]
            self.lora_bias = torch.stack(rows)  # (n_adapters, out)
        sources = [t for entry in self._pending for t in entry if t is not None]
        self._pending = []
        self.lora_scale = torch.zeros(self.total_rank, device=device, dtype=torch.float32)
        if self.lora_bias is not None:
            self.lora_bias_scale = torch.zeros(len(self.adapters), device=device, dtype=torch.float32)
        self._write_scales()
        return sources

    def set_strengths(self, strengths: dict[str, float]) -> None:
        """Weight each adapter; one not named gets 0 (off), as PEFT's `set_adapters` does."""
        for a in self.adapters:
            a.strength = float(strengths.get(a.name, 0.0))
        if not self._pending:
            self._write_scales()

    def _write_scales(self) -> None:
        """Copy the per-rank scales into the buffer in place: streamers hold references to it."""
        scale = torch.zeros(self.total_rank, dtype=torch.float32)  # (R,)
        bias_scale = torch.zeros(len(self.adapters), dtype=torch.float32)
        for i, a in enumerate(self.adapters):
            scale[a.start : a.start + a.rank] = a.strength * a.alpha_scale
            bias_scale[i] = a.strength
        self.lora_scale.copy_(scale)
        if self.lora_bias_scale is not None:
            self.lora_bias_scale.copy_(bias_scale)
        on = [a for a in self.adapters if a.strength != 0.0]
        self._ranks = (min(a.start for a in on), max(a.start + a.rank for a in on)) if on else (0, 0)

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._pending:
            self.materialize()
        lo, hi = self._ranks
        if hi == lo:
            return self.base_layer(x)  # every strength 0: exactly the base layer
        base = self.base_layer
        dtype = self.compute_dtype
        # GGUF bytes (diffusers' GGUFParameter, or plain bytes inside compiled code) are dequantized here
        w, quantized = dequantized_weight(base)
        # fresh means a temporary of our own (dequantized or cast); decided without data_ptr(), which
        # torch.compile cannot trace through GGUFParameter's __torch_function__
        fresh = quantized or w.dtype != dtype
        w = w.to(dtype)  # (out, in)
        up = self.lora_up[:, lo:hi].to(dtype) * self.lora_scale[lo:hi].to(dtype)  # (out, r)
        down = self.lora_down[lo:hi].to(dtype)  # (r, in)
        if fresh:
            w = w.addmm_(up, down)  # a fresh dequantized temporary: add in place, no second d x d buffer
        else:
            w = torch.addmm(w, up, down)  # a plain parameter: never written
        bias = base.bias.to(dtype) if base.bias is not None else None
        if self.lora_bias is not None:
            delta = (self.lora_bias_scale.to(dtype)[:, None] * self.lora_bias.to(dtype)).sum(0)  # (out,)
            bias = delta if bias is None else bias + delta
        return F.linear(x, w, bias)


def lora_linears(model: nn.Module) -> list[tuple[str, LoraLinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLinear)]


def wrap_linear(model: nn.Module, name: str) -> LoraLinear:
    """Replace the linear at `name` by a `LoraLinear` around it (once); returns the wrapper."""
    module = model.get_submodule(name)
    if isinstance(module, LoraLinear):
        return module
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{name} is a {type(module).__name__}, not a linear layer")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    wrapper = LoraLinear(module)
    parent._modules[child] = wrapper
    return wrapper


def materialize_loras(module: nn.Module, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Materialize every pending LoRA under `module` where its base weight is; returns the source views."""
    sources = []
    for _, m in lora_linears(module):
        sources += m.materialize(dtype)
    return sources


def pending_lora_bytes(module: nn.Module, dtype: torch.dtype) -> int:
    """Bytes the LoRAs under `module` will hold once materialized in `dtype`, less what they hold now."""
    total = 0
    for _, m in lora_linears(module):
        held = sum(t.numel() * t.element_size() for t in (m.lora_down, m.lora_up, m.lora_scale, m.lora_bias,
                                                          m.lora_bias_scale) if t is not None)
        total += m.lora_nbytes(dtype) - held
    return total
