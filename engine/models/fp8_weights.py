"""Expert block linears held as FP8, LoRAs merged: converted at placement, merged again when a recipe
changes the LoRA strengths.

At placement each VRAM block's linears are converted on the GPU, one at a time: the GGUF weight is
dequantized, the LoRAs are added at their current strengths (W + sum_i s_i B_i A_i in fp32, factors
rounded to the compute dtype as the GGUF path rounds them), and the sum is quantized to e4m3 with one
scale per output channel (`engine.kernels.fp8`). No dequantization or LoRA product runs per step after
that. Each FP8 linear keeps a `MergeSource`: views of the mapped GGUF and LoRA files (file-backed, no
RAM held) from which `remerge` rebuilds its weight for new strengths, so a `quality` job after a `fast`
one costs one pass over the files instead of a reload.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..kernels.fp8 import Fp8Linear, convertible, fp8_bytes, quantize_rows
from ..memory.planner import ExpertSizes, module_bytes
from .lora_linear import LoraLinear


@dataclass
class MergeSource:
    """What an FP8 linear was made from: the stored weight and each LoRA's factors, as views of their files."""

    weight: torch.Tensor  # (out, in) as stored: GGUF bytes (GGUFParameter) or a plain tensor
    bias: torch.Tensor | None  # (out,) the base bias
    adapters: list = field(default_factory=list)  # [(name, alpha_scale, down (r, in), up (out, r), bias (out,) | None)]
    dtype: torch.dtype = torch.bfloat16  # LoRA factors are rounded to it before the merge, as on the GGUF path


def fp8_targets(module: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, linear) of every linear under `module` that converts: LoRA wrappers whole,
    plain and GGUF linears not inside a wrapper, both dimensions divisible by 16."""
    out = []

    def walk(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, (LoraLinear, nn.Linear)):
                if convertible(child):
                    out.append((parent, name, child))
            elif not isinstance(child, Fp8Linear):
                walk(child)

    walk(module)
    return out


def capture_source(linear: nn.Module, dtype: torch.dtype) -> MergeSource:
    """The linear's stored weight and pending LoRA factors, before placement materializes or moves them."""
    base = linear.base_layer if isinstance(linear, LoraLinear) else linear
    adapters = []
    if isinstance(linear, LoraLinear):
        done = len(linear.adapters) - len(linear._pending)  # already materialized (a forward ran before placement)
        # materialized ones are slices of the stacked buffers, which then stay in host memory (file views do not)
        stacked = _materialized_factors(linear)[:done] if done else []
        pending = [(a.name, a.alpha_scale, d, u, b) for a, (d, u, b) in zip(linear.adapters[done:], linear._pending)]
        adapters = [tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in f) for f in stacked + pending]
    return MergeSource(base.weight.detach(), None if base.bias is None else base.bias.detach(), adapters, dtype)


def _dense(weight: torch.Tensor, device) -> torch.Tensor:
    """(out, in) fp32 on `device` from a stored weight (GGUF bytes are dequantized where they land)."""
    w = weight.to(device)
    if hasattr(weight, "quant_type"):  # diffusers' GGUFParameter
        from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

        w = dequantize_gguf_tensor(w)
    return w.float().clone()


def _add_loras(w: torch.Tensor, bias: torch.Tensor | None, factors, strengths: dict[str, float], dtype):
    """w += sum_i s_i alpha_i B_i A_i and bias += sum_i s_i db_i, one adapter at a time in fp32 (in place on w).

    The one place both placement and `remerge` merge, so the same strengths give the same bits.
    """
    for name, alpha_scale, down, up, db in factors:
        s = float(strengths.get(name, 0.0))
        if s == 0.0:
            continue
        up_d = up.to(w.device, dtype).float() * (s * alpha_scale)  # (out, r)
        w.addmm_(up_d, down.to(w.device, dtype).float())  # (out, r) @ (r, in)
        if db is not None:
            delta = s * db.to(w.device, dtype).float()  # (out,)
            bias = delta if bias is None else bias + delta
    return w, bias


def _materialized_factors(linear: LoraLinear) -> list:
    """(name, alpha/rank, A, B, bias delta) per adapter, as slices of the stacked buffers."""
    out = []
    for i, a in enumerate(linear.adapters):
        out.append((a.name, a.alpha_scale, linear.lora_down[a.start:a.start + a.rank],
                    linear.lora_up[:, a.start:a.start + a.rank],
                    linear.lora_bias[i] if linear.lora_bias is not None else None))
    return out


def effective_weight(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W (out, in), b (out,)) in fp32 as the linear computes them now: GGUF dequantized, active LoRAs added."""
    base = linear.base_layer if isinstance(linear, LoraLinear) else linear
    w = _dense(base.weight, base.weight.device)
    bias = base.bias.float().clone() if base.bias is not None else None
    if isinstance(linear, LoraLinear):
        if linear._pending:
            linear.materialize()
        strengths = {a.name: a.strength for a in linear.adapters}
        w, bias = _add_loras(w, bias, _materialized_factors(linear), strengths, linear.lora_down.dtype)
    return w, bias


def merged_weight(source: MergeSource, strengths: dict[str, float], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W + sum_i s_i alpha_i B_i A_i, b + sum_i s_i db_i) in fp32 on `device` from the source's files."""
    w = _dense(source.weight, device)
    bias = None if source.bias is None else source.bias.to(device).float()
    return _add_loras(w, bias, source.adapters, strengths, source.dtype)


def convert_to_fp8(module: nn.Module, dtype: torch.dtype, sources: dict | None = None) -> int:
    """Replace every convertible linear under `module` by an `Fp8Linear` where its weight is; returns the count.

    `sources` (id(linear) -> MergeSource, captured before placement) lets `remerge` change strengths later.
    """
    targets = fp8_targets(module)
    for parent, name, linear in targets:
        w, b = effective_weight(linear)
        fp8 = Fp8Linear.from_dense(w, b, dtype)
        fp8.merge_source = (sources or {}).get(id(linear))
        fp8.merged = {a.name: a.strength for a in linear.adapters} if isinstance(linear, LoraLinear) else {}
        parent._modules[name] = fp8
        del w, b
    return len(targets)


def remerge(model: nn.Module, strengths: dict[str, float]) -> tuple[int, float]:
    """Rebuild every FP8 linear of `model` whose merged strengths differ; returns (how many, seconds)."""
    from ..memory.host import file_mappings, page_out

    started, n, spans = time.perf_counter(), 0, file_mappings()
    for m in model.modules():
        if not isinstance(m, Fp8Linear) or not getattr(m, "merged", None):
            continue
        want = {k: float(strengths.get(k, 0.0)) for k in m.merged}
        if want == m.merged:
            continue
        if m.merge_source is None:
            raise ValueError(f"LoRA strengths {m.merged} were merged into FP8 weights without their source files; "
                             "load the models again with the new strengths, or run with SVIBOT_WEIGHTS=gguf")
        with torch.no_grad():
            w, b = merged_weight(m.merge_source, want, m.weight.device)
            q, scale = quantize_rows(w)
            m.weight.copy_(q)
            m.weight_scale.copy_(scale.reshape(1, -1))
            if m.bias is not None and b is not None:
                m.bias.copy_(b.to(m.bias.dtype))
        src = m.merge_source
        page_out([src.weight] + [t for _, _, d, u, db in src.adapters for t in (d, u, db) if t is not None], spans)
        m.merged = want
        n += 1
    return n, time.perf_counter() - started


def fp8_expert_sizes(name: str, model: nn.Module, dtype: torch.dtype) -> ExpertSizes:
    """Per-block bytes once every convertible block linear is FP8 (LoRAs merged, so none held)."""
    blocks = []
    for block in model.blocks:
        size = module_bytes(block)
        for _, _, linear in fp8_targets(block):
            size += fp8_bytes(linear.out_features, linear.in_features, linear.bias is not None, dtype)
            size -= module_bytes(linear)
        blocks.append(size)
    other = module_bytes(model) - sum(module_bytes(b) for b in model.blocks)
    return ExpertSizes(name, tuple(blocks), other)


def fp8_workspace_bytes(tokens: int, widest_in: int) -> int:
    """Eager per-token quantization of the widest linear input: an fp32 copy, its scaled twin, the e4m3 bytes."""
    return tokens * widest_in * (4 + 4 + 1)


def fp8_prepare(models, device: torch.device, plan, base_prepare):
    """A streamer `prepare` that moves each VRAM block to the device and converts it there, block by block,
    so the dequantized fp32 temporaries never exceed one linear's."""
    from ..memory.host import file_mappings, page_out

    where = {id(block): loc for name in ("transformer", "transformer_2")
             for block, loc in zip(getattr(models, name).blocks, plan.locations(name))}
    spans = file_mappings()

    def prepare(module: nn.Module) -> None:
        if where.get(id(module)) != "vram":
            base_prepare(module)
            return
        sources = {id(lin): capture_source(lin, models.dtype) for _, _, lin in fp8_targets(module)}
        base_prepare(module)  # materializes the LoRA factors in the compute dtype
        old = [t.detach() for t in list(module.parameters()) + list(module.buffers())]
        module.to(device)
        page_out(old, spans)  # the mapped GGUF pages of this block leave the process
        convert_to_fp8(module, models.dtype, sources)

    return prepare
