"""GGUF linears inside compiled code: the quantized bytes as plain uint8 tensors, the type as a constant.

diffusers holds GGUF weights as `GGUFParameter`, a tensor subclass whose `__torch_function__` wraps
every result in the subclass again. Dynamo cannot trace that reliably (a RecursionError under torch
2.11 on CUDA; `KeyError: None` from AOT autograd under 2.13, where a wrapped activation reaches the
attention). Around each call of a compiled block the engine therefore hands the block plain views of
the same bytes and keeps each weight's quantization type on its module, where traced code reads it as
a constant; Inductor then fuses diffusers' pure-torch dequantization into a few kernels per linear.
Outside those calls the weights stay `GGUFParameter`s, so placement and streaming see them as before.
"""
from __future__ import annotations

from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn

QTYPE_ATTR = "gguf_qtype"


def dequantized_weight(layer: nn.Module) -> tuple[torch.Tensor, bool]:
    """(W, True) with W (out, in) dequantized from `layer.weight`'s GGUF bytes, or (weight, False) when
    the weight is not quantized. Reads the type from the module (plain bytes) or from the parameter."""
    weight = layer.weight
    qtype = layer.__dict__.get(QTYPE_ATTR)
    if qtype is None:
        qtype = getattr(weight, "quant_type", None)
    if qtype is None:
        return weight, False
    from diffusers.quantizers.gguf.utils import GGML_QUANT_SIZES, dequantize_functions

    if hasattr(weight, "as_tensor"):  # a GGUFParameter, in eager code: drop the subclass first
        weight = weight.as_tensor()
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    raw = weight.view(torch.uint8)  # (out, in / block_size * type_size)
    shape = (*raw.shape[:-1], raw.shape[-1] // type_size * block_size)
    blocks = raw.reshape(-1, type_size)  # (n_blocks, type_size)
    return dequantize_functions[qtype](blocks, block_size, type_size).reshape(shape), True


def _plain_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """diffusers' GGUFLinear.forward_native, reading the type from the module."""
    w, _ = dequantized_weight(self)
    dtype = self.compute_dtype or x.dtype
    bias = self.bias.to(dtype) if self.bias is not None else None
    return F.linear(x, w.to(dtype), bias)


def gguf_linears(block: nn.Module) -> list[nn.Linear]:
    """The linears under `block` whose weight is GGUF bytes; each gets its type recorded on the module
    and a forward that reads it from there (exact: the same dequantization as diffusers')."""
    found = []
    for m in block.modules():
        if isinstance(m, nn.Linear) and (QTYPE_ATTR in m.__dict__ or hasattr(m.weight, "quant_type")):
            if QTYPE_ATTR not in m.__dict__:
                setattr(m, QTYPE_ATTR, m.weight.quant_type)
                if hasattr(m, "compute_dtype"):  # diffusers' GGUFLinear (a LoraLinear wrapper dequantizes itself)
                    m.forward = MethodType(_plain_forward, m)
            found.append(m)
    return found


def with_plain_weights(fn, layers: list[nn.Linear]):
    """`fn` called with each layer's GGUFParameter swapped for a plain view of the same bytes, and put back
    after (the block streamer may have swapped in a copy before the call; that copy is what is viewed)."""

    def forward(*args, **kwargs):
        saved = []
        for m in layers:
            w = m._parameters["weight"]
            if hasattr(w, "as_tensor"):
                saved.append((m, w))
                m._parameters["weight"] = w.as_tensor()
        try:
            return fn(*args, **kwargs)
        finally:
            for m, w in saved:
                m._parameters["weight"] = w

    return forward
