"""The fast path for a loaded `Models` on its device: how expert weights are held, which attention kernel
runs, whether the repeated block is compiled. Decided once at placement and printed with the memory plan.

Weights: on GPUs with FP8 tensor cores (sm_89+), when both experts fit in VRAM as FP8, every block
linear is converted once at placement: the GGUF weight is dequantized, the LoRAs are added at their
configured strengths (W + sum_i s_i B_i A_i, in fp32), and the sum is quantized to e4m3 with one
scale per output channel (`engine.kernels.fp8`). No dequantization or LoRA product runs per step after
that. Elsewhere the GGUF weights stay and are dequantized per call with the LoRAs on the weight side.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from storage.errors import BadSetting

from ..kernels.attention import AttentionChoice, choose_attention, format_choice
from ..kernels.compile import compile_blocks, compile_wanted
from ..kernels.fp8 import Fp8Linear, convertible, fp8_bytes, scaled_mm_works
from ..memory.planner import ExpertSizes, module_bytes
from .lora_linear import LoraLinear

log = logging.getLogger(__name__)

WEIGHT_CHOICES = ("auto", "gguf", "fp8")


def parse_weights(value: str | None) -> str:
    """SVIBOT_WEIGHTS: auto (FP8 where it runs and fits), gguf, or fp8."""
    v = (value or "auto").strip().lower()
    if v not in WEIGHT_CHOICES:
        raise BadSetting(f"SVIBOT_WEIGHTS must be one of {', '.join(WEIGHT_CHOICES)} but is {value!r}")
    return v


@dataclass(frozen=True)
class FastPath:
    weights: str  # "fp8" or "gguf"
    weights_reason: str
    attention: AttentionChoice
    compiled: bool
    compile_reason: str
    compiled_blocks: int = 0

    def lines(self) -> list[str]:
        return ([f"weights: {self.weights} ({self.weights_reason})"] + format_choice(self.attention)
                + [f"compile: {'on' if self.compiled else 'off'} ({self.compile_reason}"
                   + (f"; {self.compiled_blocks} blocks" if self.compiled else "") + ")"])


# -- FP8 conversion ---------------------------------------------------------------------------------
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


def effective_weight(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W (out, in), b (out,)) in fp32 as the linear computes them now: GGUF dequantized, active LoRAs added."""
    base = linear.base_layer if isinstance(linear, LoraLinear) else linear
    w = base.weight
    if hasattr(w, "quant_type"):  # diffusers' GGUFParameter
        from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

        w = dequantize_gguf_tensor(w)
    w = w.float().clone()  # (out, in)
    bias = base.bias.float().clone() if base.bias is not None else None
    if isinstance(linear, LoraLinear):
        if linear._pending:
            linear.materialize()
        lo, hi = linear._ranks
        if hi > lo:
            up = linear.lora_up[:, lo:hi].float() * linear.lora_scale[lo:hi]  # (out, r)
            w.addmm_(up, linear.lora_down[lo:hi].float())  # (out, r) @ (r, in)
        if linear.lora_bias is not None:
            delta = (linear.lora_bias_scale[:, None] * linear.lora_bias.float()).sum(0)  # (out,)
            bias = delta if bias is None else bias + delta
    return w, bias


def convert_to_fp8(module: nn.Module, dtype: torch.dtype) -> int:
    """Replace every convertible linear under `module` by an `Fp8Linear` where its weight is; returns the count."""
    targets = fp8_targets(module)
    for parent, name, linear in targets:
        w, b = effective_weight(linear)
        parent._modules[name] = Fp8Linear.from_dense(w, b, dtype)
        del w, b
    return len(targets)


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
        base_prepare(module)
        if where.get(id(module)) != "vram":
            return
        old = [t.detach() for t in list(module.parameters()) + list(module.buffers())]
        module.to(device)
        page_out(old, spans)  # the mapped GGUF pages of this block leave the process
        convert_to_fp8(module, models.dtype)

    return prepare


def choose_weights(setting: str, device: torch.device, plan_fp8, probe=scaled_mm_works) -> tuple[str, str, object]:
    """("fp8" | "gguf", why, the FP8 plan or None). `plan_fp8()` plans the experts at their FP8 sizes;
    `probe(device)` says why FP8 matmuls cannot run there, or None."""
    if setting == "gguf":
        return "gguf", "set by SVIBOT_WEIGHTS", None
    why_not = probe(device)
    if why_not is None:
        from ..memory.planner import PlacementError

        try:
            plan = plan_fp8()
            off = sum(loc != "vram" for _, locs in plan.blocks for loc in locs)
        except PlacementError as err:  # the FP8 blocks are larger: the budget may not stream even one
            plan, off = None, f"all ({err})"
        if not off:
            cap = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
            where = f"sm_{cap[0]}{cap[1]}" if cap else str(device)
            return "fp8", (f"{where} has FP8 tensor cores and both experts fit VRAM as FP8 "
                           f"({plan.bytes_at('vram') / 2**30:.2f} GiB of blocks)"), plan
        why_not = f"{off} blocks would not fit VRAM as FP8 under this budget (FP8 blocks are not streamed)"
    if setting == "fp8":
        raise BadSetting(f"SVIBOT_WEIGHTS=fp8 cannot be used here: {why_not}; use auto or gguf")
    return "gguf", f"GGUF dequantized per call: {why_not}", None


def finish_fast_path(models, device: torch.device, config, weights: str, weights_reason: str,
                     attention: AttentionChoice) -> FastPath:
    """Set the attention backend on both experts and compile their repeated blocks where wanted."""
    from ..kernels.attention import apply_attention

    for name in ("transformer", "transformer_2"):
        apply_attention(getattr(models, name), attention)
    compiled, why = compile_wanted(getattr(config, "compile", "auto") if config else "auto", device)
    n = 0
    if compiled:
        if config is not None and config.cache_dir is not None:
            import os

            # Inductor's compiled kernels persist in the data dir, so a restart recompiles from its cache
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(config.cache_dir) / "inductor"))
            why += f"; Inductor cache {os.environ['TORCHINDUCTOR_CACHE_DIR']}"
        for name in ("transformer", "transformer_2"):
            n += compile_blocks(getattr(models, name))
    fast = FastPath(weights, weights_reason, attention, compiled, why, n)
    log.info("fast path:\n%s", "\n".join(fast.lines()))
    return fast


def pick_attention(models, device: torch.device, config, settings) -> AttentionChoice:
    """The self-test on the segment's token count and the experts' head size (before the experts are placed)."""
    cfg = models.transformer.config
    tokens = settings.num_latent_frames * (settings.height // 16) * (settings.width // 16)
    return choose_attention(getattr(config, "attention", "auto") if config else "auto", device, models.dtype,
                            tokens, cfg.attention_head_dim)
