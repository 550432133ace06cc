"""Frozen settings for the loaded engine: which preset, where its files are, device, dtype and budgets."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from storage.errors import BadSetting

from .presets import PRESETS, ModelFiles


@dataclass(frozen=True)
class EngineConfig:
    preset: str  # a key of engine.models.presets.PRESETS
    models_dir: Path  # huggingface_hub cache under the data dir
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str | None = None  # None: fp16 before Ampere, bf16 on Ampere+, fp32 on the CPU
    file_overrides: tuple[tuple[str, str], ...] = ()  # (field of ModelFiles, value), e.g. ("high_file", "...")
    use_loras: bool = True  # False runs plain Wan 2.2 (chaining="last-frame"); strengths come with each job
    vram_budget_gib: float | None = None  # for the block-streaming planner
    ram_budget_gib: float | None = None
    cache_dir: Path | None = None  # prompt embeddings are cached under cache_dir/text; None: no cache
    attention: str = "auto"  # SVIBOT_ATTENTION: auto (start-up self-test) or a kernel name (engine.kernels.attention)
    compile: str = "auto"  # SVIBOT_COMPILE: auto (regional compile on CUDA) or off
    weights: str = "auto"  # SVIBOT_WEIGHTS: auto (FP8 on sm_89+ where both experts fit VRAM), gguf or fp8

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise BadSetting(f"preset must be one of {sorted(PRESETS)} but is {self.preset!r}")
        if self.dtype not in (None, "float32", "float16", "bfloat16"):
            raise BadSetting(f"dtype must be float32, float16 or bfloat16 but is {self.dtype!r}")
        from ..kernels.attention import parse_attention
        from ..kernels.compile import parse_compile
        from .fast import parse_weights

        # normalised once here, so every later check compares plain lower-case values
        object.__setattr__(self, "attention", parse_attention(self.attention))
        object.__setattr__(self, "compile", parse_compile(self.compile))
        object.__setattr__(self, "weights", parse_weights(self.weights))
        known = {f.name for f in fields(ModelFiles)}
        for key, _ in self.file_overrides:
            if key not in known:
                raise BadSetting(f"file override {key!r} is not one of {sorted(known)}")


def default_preset(vram_budget_gib: float | None = None, ram_budget_gib: float | None = None) -> str:
    """Where CUDA is available, `q4_k_m` if both experts and their LoRAs fit VRAM + RAM with no disk
    reads per segment, else the largest smaller preset that does (on a T4: see `engine.models.fit`);
    without CUDA, the random-weight `tiny` preset. Budgets default to what the machine has free."""
    import torch

    if not torch.cuda.is_available():
        return "tiny"
    from .fit import budgets, pick_default

    return pick_default(*budgets(vram_budget_gib, ram_budget_gib))
