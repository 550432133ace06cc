"""SVI 2.0 Pro and LightX2V LoRAs as unfused, named PEFT adapters on both experts.

Fusing into GGUF weights fails (diffusers #12047), so adapters stay separate and are weighted per expert.
Accepted key formats: official SVI (`blocks.N...lora_B.default.weight`), ComfyUI/Kijai
(`diffusion_model.blocks.N...`) and musubi (`lora_unet_blocks_N_...`).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from ..config import LoraStrengths
from ..errors import LoraMismatch

log = logging.getLogger(__name__)

PREFIX = "transformer"  # what diffusers' Wan converter puts in front of every key


def to_comfy_format(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official SVI keys -> ComfyUI keys: drop PEFT's `.default` and add `diffusion_model.`."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace(".default.", ".")
        if key.startswith("model.diffusion_model."):
            key = key[len("model."):]
        if not key.startswith("diffusion_model."):
            key = "diffusion_model." + key
        out[key] = value
    return out


def to_diffusers_format(state_dict: Mapping[str, torch.Tensor], source: str = "LoRA") -> dict[str, torch.Tensor]:
    """Convert any accepted format to diffusers' `transformer.<module>.lora_{A,B}.weight` keys."""
    from diffusers.loaders.lora_conversion_utils import (
        _convert_musubi_wan_lora_to_diffusers,
        _convert_non_diffusers_wan_lora_to_diffusers,
    )

    state_dict = dict(state_dict)
    if not state_dict:
        raise LoraMismatch(f"{source} holds no tensors")
    if all(k.startswith(f"{PREFIX}.") for k in state_dict):
        return state_dict
    if any(k.endswith(".alpha") for k in state_dict):
        # diffusers folds alpha into the tensors in place; keep the caller's tensors intact
        state_dict = {k: v.clone() for k, v in state_dict.items()}
    try:
        if any(k.startswith("lora_unet_") for k in state_dict):
            return _convert_musubi_wan_lora_to_diffusers(state_dict)
        return _convert_non_diffusers_wan_lora_to_diffusers(to_comfy_format(state_dict))
    except (ValueError, KeyError) as err:
        sample = sorted(state_dict)[:3]
        raise LoraMismatch(f"{source} is not a Wan LoRA this engine can read (keys like {sample}): {err}") from err


def matched_modules(transformer: torch.nn.Module, converted: Mapping[str, torch.Tensor]) -> tuple[set, set]:
    """(modules the LoRA targets that exist in `transformer`, those that do not)."""
    names = {name for name, _ in transformer.named_modules()}
    targets = set()
    for key in converted:
        module = key[len(PREFIX) + 1:] if key.startswith(f"{PREFIX}.") else key
        targets.add(module.rsplit(".lora_", 1)[0])
    return targets & names, targets - names


def load_lora(transformer: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], adapter_name: str,
              source: str = "LoRA") -> int:
    """Attach one LoRA as adapter `adapter_name`; returns how many layers it targets.

    A LoRA that targets no layer of this model raises `LoraMismatch` instead of silently doing nothing.
    """
    converted = to_diffusers_format(state_dict, source)
    found, missing = matched_modules(transformer, converted)
    if not found:
        sample = sorted(missing)[:3]
        raise LoraMismatch(f"{source} matches no layer of the model (it targets e.g. {sample})")
    if missing:
        log.warning("%s: %d of %d target layers are not in the model, e.g. %s",
                    source, len(missing), len(found) + len(missing), sorted(missing)[:3])
        converted = {k: v for k, v in converted.items() if k[len(PREFIX) + 1:].rsplit(".lora_", 1)[0] in found}
    transformer.load_lora_adapter(converted, prefix=PREFIX, adapter_name=adapter_name)
    return len(found)


def set_strengths(models, strengths: LoraStrengths) -> None:
    """Weight the SVI and LightX2V adapters of both experts; the one place strengths change, per job.

    `models` is anything with `transformer` (high-noise) and `transformer_2` (low-noise) experts. Adapters
    stay loaded and unfused: a weight of 0 switches one off without a reload, and a later job turns it back
    on. An expert without a given adapter (none on `tiny`, no LightX2V file) is simply not weighted.
    """
    plan = {"transformer": {"svi": strengths.svi_high, "lightx2v": strengths.lightx2v_high},
            "transformer_2": {"svi": strengths.svi_low, "lightx2v": strengths.lightx2v_low}}
    for expert_name, weights in plan.items():
        expert = getattr(models, expert_name)
        loaded = getattr(expert, "peft_config", None) or {}
        names = [name for name in weights if name in loaded]
        if names:
            expert.set_adapters(names, [float(weights[name]) for name in names])


def read_lora_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def apply_loras(models, paths: Mapping[str, Path], strengths: LoraStrengths) -> frozenset[str]:
    """Load SVI Pro and LightX2V onto the high- and low-noise experts; returns the adapter names loaded.

    `strengths` only sets the weights until the first job, which applies its recipe's through `set_strengths`.
    """
    plan = {"transformer": {"svi": "svi_high", "lightx2v": "lightx2v_high"},
            "transformer_2": {"svi": "svi_low", "lightx2v": "lightx2v_low"}}
    loaded = set()
    for expert_name, adapters in plan.items():
        expert = getattr(models, expert_name)
        for adapter_name, part in adapters.items():
            if part not in paths:
                continue
            n = load_lora(expert, read_lora_file(paths[part]), adapter_name, source=str(paths[part]))
            log.info("%s: adapter %s from %s on %d layers", expert_name, adapter_name, paths[part], n)
            loaded.add(adapter_name)
    set_strengths(models, strengths)
    return frozenset(loaded)
