"""SVI 2.0 Pro and LightX2V LoRAs on both experts, applied on the weight side (`lora_linear.py`).

Accepted key formats: official SVI (`blocks.N...lora_B.default.weight`), ComfyUI/Kijai
(`diffusion_model.blocks.N...lora_up.weight` with `.alpha`), musubi (`lora_unet_blocks_N_...`) and
diffusers (`transformer.blocks.N.attn1.to_q.lora_A.weight`). Keys are mapped to diffusers module
names as diffusers' own converters map them (`diffusers.loaders.lora_conversion_utils`), but without
copying: the factors stay views of the mapped file, alpha/rank is kept as a scale, not multiplied in.
Fusing into GGUF weights fails (diffusers #12047); see `lora_linear.py` for why the weight side.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import LoraStrengths
from ..errors import LoraMismatch
from .lora_linear import LoraLinear, lora_linears, wrap_linear

log = logging.getLogger(__name__)

PREFIX = "transformer"  # diffusers' prefix for Wan transformer LoRA keys

# Wan module name -> diffusers module name (diffusers' convert_wan_transformer_to_diffusers).
_WAN_TO_DIFFUSERS = [
    (r"^blocks\.(\d+)\.self_attn\.(q|k|v)$", r"blocks.\1.attn1.to_\2"),
    (r"^blocks\.(\d+)\.self_attn\.o$", r"blocks.\1.attn1.to_out.0"),
    (r"^blocks\.(\d+)\.cross_attn\.(q|k|v)$", r"blocks.\1.attn2.to_\2"),
    (r"^blocks\.(\d+)\.cross_attn\.o$", r"blocks.\1.attn2.to_out.0"),
    (r"^blocks\.(\d+)\.cross_attn\.(k|v)_img$", r"blocks.\1.attn2.add_\2_proj"),
    (r"^blocks\.(\d+)\.ffn\.0$", r"blocks.\1.ffn.net.0.proj"),
    (r"^blocks\.(\d+)\.ffn\.2$", r"blocks.\1.ffn.net.2"),
    (r"^text_embedding\.0$", "condition_embedder.text_embedder.linear_1"),
    (r"^text_embedding\.2$", "condition_embedder.text_embedder.linear_2"),
    (r"^time_embedding\.0$", "condition_embedder.time_embedder.linear_1"),
    (r"^time_embedding\.2$", "condition_embedder.time_embedder.linear_2"),
    (r"^time_projection\.1$", "condition_embedder.time_proj"),
    (r"^head\.head$", "proj_out"),
    (r"^img_emb\.proj\.1$", "condition_embedder.image_embedder.ff.net.0.proj"),
    (r"^img_emb\.proj\.3$", "condition_embedder.image_embedder.ff.net.2"),
]
# musubi flattens dots to underscores: blocks_3_self_attn_q, blocks_3_ffn_0, time_projection_1, ...
_MUSUBI = [
    (r"^blocks_(\d+)_(self_attn|cross_attn)_(q|k|v|o|k_img|v_img)$", r"blocks.\1.\2.\3"),
    (r"^blocks_(\d+)_ffn_(\d)$", r"blocks.\1.ffn.\2"),
    (r"^(text_embedding|time_embedding|time_projection)_(\d)$", r"\1.\2"),
    (r"^head_head$", "head.head"),
]
_ROLES = [  # key suffix -> part of a LoRA
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora_B.bias", "bias"), (".diff_b", "bias"), (".alpha", "alpha"), (".diff", "diff"),
]


@dataclass
class LoraFactors:
    """One linear's LoRA: A (r, in), B (out, r), an optional bias delta (out,), and alpha/rank."""

    down: torch.Tensor
    up: torch.Tensor
    bias: torch.Tensor | None
    alpha_scale: float


def _module_name(raw: str) -> str:
    """A key's module part in diffusers names, whatever format it came in."""
    if raw.startswith(f"{PREFIX}."):
        return raw[len(PREFIX) + 1:]  # already diffusers names
    if raw.startswith("lora_unet_"):
        raw = raw[len("lora_unet_"):]
        for pattern, repl in _MUSUBI:
            raw = re.sub(pattern, repl, raw)
    for prefix in ("model.diffusion_model.", "diffusion_model."):
        if raw.startswith(prefix):
            raw = raw[len(prefix):]
    for pattern, repl in _WAN_TO_DIFFUSERS:
        if re.match(pattern, raw):
            return re.sub(pattern, repl, raw)
    return raw


def parse_lora(state_dict: Mapping[str, torch.Tensor], source: str = "LoRA") -> dict[str, LoraFactors]:
    """diffusers module name -> factors, for every LoRA pair in the file; the tensors are not copied."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        for suffix, role in _ROLES:
            if key.endswith(suffix):
                parts.setdefault(_module_name(key[: -len(suffix)]), {})[role] = value
                break
        else:
            parts.setdefault(key, {})["unknown"] = value
    if not parts:
        raise LoraMismatch(f"{source} holds no tensors")
    out, skipped = {}, []
    for module, p in parts.items():
        if "down" not in p or "up" not in p:
            # norm `.diff` keys are zeros in the LightX2V files and diffusers drops them too
            skipped.append(module)
            continue
        down, up = p["down"], p["up"]  # (r, in), (out, r)
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise LoraMismatch(f"{source}: {module} has factors of shapes {tuple(down.shape)} and "
                               f"{tuple(up.shape)}, not (rank, in) and (out, rank)")
        alpha = float(p["alpha"]) if "alpha" in p else None
        out[module] = LoraFactors(down, up, p.get("bias"), alpha / down.shape[0] if alpha is not None else 1.0)
    if not out:
        raise LoraMismatch(f"{source} is not a Wan LoRA this engine can read (keys like {sorted(state_dict)[:3]})")
    if skipped:
        log.info("%s: %d entries without a lora pair skipped (e.g. %s)", source, len(skipped), sorted(skipped)[:3])
    return out


def load_lora(transformer: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], adapter_name: str,
              source: str = "LoRA", strength: float = 1.0) -> int:
    """Attach one LoRA as adapter `adapter_name` on the weight side; returns how many layers it targets.

    A LoRA that targets no layer of this model raises `LoraMismatch` instead of silently doing nothing.
    """
    factors = parse_lora(state_dict, source)
    linears = {name for name, m in transformer.named_modules() if isinstance(m, (torch.nn.Linear, LoraLinear))}
    found = sorted(set(factors) & linears)
    missing = sorted(set(factors) - linears)
    if not found:
        raise LoraMismatch(f"{source} matches no layer of the model (it targets e.g. {missing[:3]})")
    if missing:
        log.warning("%s: %d of %d target layers are not in the model, e.g. %s",
                    source, len(missing), len(factors), missing[:3])
    for name in found:
        f = factors[name]
        linear = transformer.get_submodule(name)
        shape = (linear.out_features, linear.in_features)
        if (f.up.shape[0], f.down.shape[1]) != shape:
            raise LoraMismatch(f"{source}: {name} is {shape[0]}x{shape[1]} in the model but the LoRA's factors "
                               f"make {f.up.shape[0]}x{f.down.shape[1]}")
    for name in found:
        f = factors[name]
        wrap_linear(transformer, name).add_adapter(adapter_name, f.down, f.up, f.bias, f.alpha_scale, strength)
    _state(transformer)[adapter_name] = float(strength)
    return len(found)


def _state(transformer: torch.nn.Module) -> dict[str, float]:
    """The strengths last set on this expert, by adapter name (kept on the module for logs)."""
    if not hasattr(transformer, "_lora_strengths"):
        transformer._lora_strengths = {}
    return transformer._lora_strengths


def adapter_names(transformer: torch.nn.Module) -> list[str]:
    return list(_state(transformer))


def set_expert_strengths(transformer: torch.nn.Module, strengths: Mapping[str, float]) -> None:
    """Weight the named adapters of one expert; an adapter not named is turned off (PEFT's `set_adapters`).

    The new scales are written into each LoRA linear's small scale buffer where the block lives,
    so switching a recipe costs no reload and no re-placement.
    """
    state = _state(transformer)
    unknown = sorted(set(strengths) - set(state))
    if unknown:
        raise ValueError(f"adapter(s) {unknown} are not loaded on this expert; loaded: {sorted(state)}")
    new = {name: float(strengths.get(name, 0.0)) for name in state}
    if new == state:
        return
    label = getattr(transformer, "_svibot_name", type(transformer).__name__)
    from ..kernels.fp8 import Fp8Linear

    if any(isinstance(m, Fp8Linear) for m in transformer.modules()):
        from .fp8_weights import remerge

        n, seconds = remerge(transformer, new)  # FP8 holds the LoRAs merged: rebuild from the mapped files
        log.info("%s: LoRA strengths %s -> %s (merged again into %d FP8 linears in %.1f s)", label,
                 _fmt(state), _fmt(new), n, seconds)
        state.update(new)
        return
    with torch.no_grad():
        for _, m in lora_linears(transformer):
            m.set_strengths(new)
    log.info("%s: LoRA strengths %s -> %s (weight-side scales, no reload)", label,
             _fmt(state), _fmt(new))
    state.update(new)


def set_strengths(models, strengths: LoraStrengths) -> None:
    """Weight the SVI and LightX2V adapters of both experts; the one place strengths change, per job.

    `models` is anything with `transformer` (high-noise) and `transformer_2` (low-noise) experts. Adapters
    stay loaded: a weight of 0 switches one off without a reload, and a later job turns it back on. An
    expert without a given adapter (none on `tiny`, no LightX2V file) is simply not weighted.
    """
    for expert_name, weights in expert_strengths(strengths).items():
        expert = getattr(models, expert_name)
        loaded = set(_state(expert)) if expert is not None else set()
        if loaded:
            set_expert_strengths(expert, {name: w for name, w in weights.items() if name in loaded})


def _fmt(strengths: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in strengths.items()) or "none"


def read_lora_file(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors as views of its mapping: no copy in RAM until placement reads them."""
    from ..memory.host import read_safetensors_mapped

    return read_safetensors_mapped(path)


def expert_strengths(strengths: LoraStrengths) -> dict[str, dict[str, float]]:
    """Expert attribute name -> {adapter: strength}, from the per-expert recipe strengths."""
    return {"transformer": {"svi": strengths.svi_high, "lightx2v": strengths.lightx2v_high},
            "transformer_2": {"svi": strengths.svi_low, "lightx2v": strengths.lightx2v_low}}


def apply_loras(models, paths: Mapping[str, Path], strengths: LoraStrengths) -> frozenset[str]:
    """Attach SVI Pro and LightX2V to the high- and low-noise experts; returns the adapter names loaded.

    `strengths` only sets the weights until the first job, which applies its recipe's through `set_strengths`.
    """
    parts = {"transformer": {"svi": "svi_high", "lightx2v": "lightx2v_high"},
             "transformer_2": {"svi": "svi_low", "lightx2v": "lightx2v_low"}}
    loaded = set()
    for expert_name, adapters in parts.items():
        expert = getattr(models, expert_name)
        expert._svibot_name = expert_name
        for adapter_name, part in adapters.items():
            if part not in paths:
                continue
            n = load_lora(expert, read_lora_file(paths[part]), adapter_name, source=str(paths[part]))
            log.info("%s: adapter %s from %s on %d layers (weight side)", expert_name, adapter_name, paths[part], n)
            loaded.add(adapter_name)
    set_strengths(models, strengths)
    return frozenset(loaded)
