"""The fast path for a loaded `Models` on its device: how expert weights are held (FP8 where it runs and
fits, `fp8_weights.py`; else GGUF), which attention kernel runs, whether the repeated block is compiled.
Decided once at placement and printed with the memory plan.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from storage.errors import BadSetting

from ..kernels.attention import AttentionChoice, choose_attention, format_choice
from ..kernels.compile import compile_blocks, compile_wanted
from ..kernels.fp8 import scaled_mm_works

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
