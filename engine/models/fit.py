"""Which presets run without reading the disk every segment, under given VRAM and RAM budgets.

The planner decides from the loaded models; before anything is downloaded the same planner runs on
sizes estimated from the preset table: each expert's file split into 40 equal blocks plus its non-block
part, and each block carrying its share of the SVI and LightX2V factors in the compute dtype.
"""
from __future__ import annotations

import logging

from ..config import GenerationSettings
from ..memory.planner import (
    GIB, ExpertSizes, MemoryNeeds, Plan, PlacementError, default_budgets, estimate_activation_bytes,
    estimate_dequant_bytes, estimate_vae_decode_bytes, plan_placement,
)
from .presets import PRESETS, Preset, get_preset

log = logging.getLogger(__name__)

# Wan 2.2 I2V A14B (the packaged configs): 40 blocks of width 5120, FFN 13824.
NUM_BLOCKS, DIM, FFN_DIM = 40, 5120, 13824
# Embeddings, time projection and head: 0.14 GB of a 9.33 GB Q4_K_M-layout expert.
NON_BLOCK_FRACTION = 0.015
LORA_PARTS = {"transformer": ("svi_high", "lightx2v_high"), "transformer_2": ("svi_low", "lightx2v_low")}
DEFAULT_CEILING = "q4_k_m"  # the default never picks a larger (slower to fetch) preset than this


def preset_needs(preset: Preset | str, itemsize: int = 2, use_loras: bool = True,
                 settings: GenerationSettings | None = None) -> MemoryNeeds:
    """What the planner would see for this preset's files, estimated from their listed sizes.

    LoRA files ship 16-bit factors; they are held in the compute dtype (`itemsize` bytes).
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    s = settings or preset.settings
    experts = []
    for name, part in (("transformer", "high"), ("transformer_2", "low")):
        size = int(preset.sizes.get(part, 0))
        other = int(size * NON_BLOCK_FRACTION)
        file_block = (size - other) // NUM_BLOCKS
        lora = int(sum(preset.sizes.get(p, 0) for p in LORA_PARTS[name]) * itemsize / 2) if use_loras else 0
        lora_block = lora // NUM_BLOCKS
        experts.append(ExpertSizes(name, (file_block + lora_block,) * NUM_BLOCKS, other,
                                   block_file_bytes=(file_block,) * NUM_BLOCKS, lora_bytes=lora))
    tokens = s.num_latent_frames * (s.height // 16) * (s.width // 16)
    return MemoryNeeds(
        experts=tuple(experts), vae_bytes=int(preset.sizes.get("vae", 0)), text_encoder_bytes=0,
        activation_bytes=estimate_activation_bytes(tokens, DIM, FFN_DIM, itemsize),
        vae_activation_bytes=estimate_vae_decode_bytes(s.height, s.width, itemsize),
        dequant_bytes=estimate_dequant_bytes(FFN_DIM * DIM, itemsize),
    )


def preset_plan(preset: Preset | str, vram_budget: int, ram_budget: int, **kwargs) -> Plan | None:
    """The plan for this preset under the budgets, or None when even streaming everything fails."""
    try:
        return plan_placement(preset_needs(preset, **kwargs), vram_budget, ram_budget)
    except PlacementError:
        return None


def fits(preset: Preset | str, vram_budget: int, ram_budget: int, **kwargs) -> bool:
    """True when every block of both experts is held in VRAM or pinned RAM: no disk reads per segment."""
    plan = preset_plan(preset, vram_budget, ram_budget, **kwargs)
    return plan is not None and plan.bytes_at("disk") == 0


def gguf_presets() -> list[Preset]:
    """Downloadable presets, smallest first."""
    return sorted((p for p in PRESETS.values() if p.files is not None), key=lambda p: p.sizes.get("high", 0))


def largest_fitting(vram_budget: int, ram_budget: int, ceiling: str | None = None, **kwargs) -> str | None:
    """The largest preset (up to `ceiling`) that runs without disk reads, or None if none does."""
    best = None
    for p in gguf_presets():
        if ceiling is not None and p.sizes["high"] > get_preset(ceiling).sizes["high"]:
            break
        if fits(p, vram_budget, ram_budget, **kwargs):
            best = p.name
    return best


def budgets(vram_budget_gib: float | None = None, ram_budget_gib: float | None = None) -> tuple[int, int]:
    """The given budgets, or what this machine has free now (VRAM on the first GPU, available RAM)."""
    vram, ram = default_budgets()
    return (int(vram_budget_gib * GIB) if vram_budget_gib is not None else vram,
            int(ram_budget_gib * GIB) if ram_budget_gib is not None else ram)


def pick_default(vram_budget: int, ram_budget: int) -> str:
    """`q4_k_m` if it fits, else the largest smaller preset that does, else the smallest."""
    best = largest_fitting(vram_budget, ram_budget, ceiling=DEFAULT_CEILING)
    chosen = best or gguf_presets()[0].name
    if chosen != DEFAULT_CEILING:
        log.info("default preset %s: %s with its LoRAs does not fit %.1f GiB VRAM + %.1f GiB RAM without disk reads",
                 chosen, DEFAULT_CEILING, vram_budget / GIB, ram_budget / GIB)
    return chosen


def fit_report(preset: Preset | str, vram_budget: int, ram_budget: int, use_loras: bool = True) -> str:
    """A few lines saying whether `preset` fits these budgets and, if not, which preset does."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    where = f"{vram_budget / GIB:.1f} GiB VRAM + {ram_budget / GIB:.1f} GiB RAM"
    if preset.files is None:
        return f"preset {preset.name} is built in code and fits anywhere"
    needs = preset_needs(preset, use_loras=use_loras)
    weights = sum(sum(e.block_bytes) + e.other_bytes for e in needs.experts)
    lora = sum(e.lora_bytes for e in needs.experts)
    head = (f"preset {preset.name}: both experts with their LoRAs hold {weights / GIB:.2f} GiB "
            f"(LoRAs {lora / GIB:.2f} GiB)")
    plan = preset_plan(preset, vram_budget, ram_budget, use_loras=use_loras)
    if plan is not None and plan.bytes_at("disk") == 0:
        return f"{head}; it fits {where} with no disk reads per segment"
    if plan is None:
        verdict = f"it cannot run under {where} at all"
    else:
        disk = 2 * sum(plan.disk_bytes_per_forward(e.name) for e in needs.experts)
        held = plan.bytes_at("vram") + plan.bytes_at("ram")
        blocks = sum(sum(e.block_bytes) for e in needs.experts)
        verdict = (f"under {where} its blocks need {blocks / GIB:.2f} GiB but only {held / GIB:.2f} GiB fit, "
                   f"so every segment reads {disk / 1e9:.1f} GB from disk")
    best = largest_fitting(vram_budget, ram_budget, use_loras=use_loras)
    advice = (f"the largest preset that fits is {best} (--preset {best})" if best
              else "no preset fits without disk reads")
    return f"{head}; {verdict}; {advice}"
