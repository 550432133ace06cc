"""Place a loaded `Models` by a memory plan: the experts block by block, the VAE and the text encoder.

The planner (`engine.memory.planner`) decides; the streamer (`engine.memory.streaming`) moves blocks.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import torch
from torch import nn

from ..config import GenerationSettings
from ..memory.planner import (
    ExpertSizes, MemoryNeeds, default_budgets, estimate_activation_bytes, estimate_dequant_bytes,
    estimate_vae_decode_bytes, format_plan, module_bytes, plan_placement,
)
from ..memory.streaming import place_model
from .lora_linear import lora_linears, materialize_loras, pending_lora_bytes
from .text_encoder import LazyTextEncoder


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def placed_expert_sizes(name: str, model: nn.Module, dtype: torch.dtype) -> ExpertSizes:
    """Per-block bytes as the blocks will sit once placed: LoRA factors materialized in `dtype` counted.

    The file part of a block is its quantized weights (views of the mapped GGUF); small tensors that
    the loader cast, and LoRA factors, exist only in memory.
    """
    blocks, files = [], []
    for block in model.blocks:
        blocks.append(module_bytes(block) + pending_lora_bytes(block, dtype))
        files.append(sum(_tensor_bytes(p) for p in block.parameters() if hasattr(p, "quant_type")))
    lora = pending_lora_bytes(model, dtype) + sum(
        _tensor_bytes(t) for _, m in lora_linears(model)
        for t in (m.lora_down, m.lora_up, m.lora_scale, m.lora_bias, m.lora_bias_scale) if t is not None)
    total = module_bytes(model) + pending_lora_bytes(model, dtype)
    return ExpertSizes(name, tuple(blocks), total - sum(blocks), block_file_bytes=tuple(files), lora_bytes=lora)


def largest_quantized_numel(*models: nn.Module) -> int:
    """Values of the largest quantized weight: its dequantized temporary is the largest one per call."""
    from gguf import GGML_QUANT_SIZES

    largest = 0
    for model in models:
        for p in model.parameters():
            if hasattr(p, "quant_type"):
                block, type_size = GGML_QUANT_SIZES[p.quant_type]
                largest = max(largest, p.numel() * p.element_size() // type_size * block)
    return largest


def _prepare_block(dtype: torch.dtype):
    """Materialize a block's LoRA factors just before it is placed, then drop the LoRA files' pages."""
    from ..memory.host import file_mappings, page_out

    def prepare(block: nn.Module) -> None:
        sources = materialize_loras(block, dtype)
        if sources:
            page_out(sources, file_mappings())

    return prepare


def _anonymous_host_bytes(modules) -> int:
    """Bytes these modules hold in host memory that is not a mapped file (it moves out when placed)."""
    from ..memory.host import file_mappings

    spans = file_mappings()
    total = 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.device.type == "cpu" and not any(a <= t.data_ptr() < b for a, b in spans):
                total += _tensor_bytes(t)
    return total


def plan_models(models, device: torch.device, vram_budget: int | None = None, ram_budget: int | None = None,
                settings=None, weights: str = "gguf"):
    """The memory plan for a loaded `Models`, without moving anything.

    Budgets default to what the machine has: free VRAM now, and available RAM plus the anonymous
    host memory the loaded models hold (it moves out of the host when placed; mapped files do not
    count, their pages are not the process's to give back). `weights="fp8"` sizes the blocks as
    `engine.models.fast` converts them (LoRAs merged) and the workspace for per-token quantization.
    """
    s = settings or GenerationSettings()
    cfg = models.transformer.config
    lazy = isinstance(models.text_encoder, LazyTextEncoder)  # holds no weights; read from its files per job
    te_bytes = models.text_encoder.nbytes if lazy else module_bytes(models.text_encoder)
    parts = (models.transformer, models.transformer_2, models.vae) + (() if lazy else (models.text_encoder,))
    free_vram, free_ram = default_budgets(device)
    tokens = s.num_latent_frames * (s.height // 16) * (s.width // 16)  # after the 1x2x2 patching
    itemsize = models.dtype.itemsize
    if weights == "fp8":
        from .fp8_weights import fp8_expert_sizes, fp8_workspace_bytes

        experts = tuple(fp8_expert_sizes(n, getattr(models, n), models.dtype) for n in ("transformer", "transformer_2"))
        dequant = fp8_workspace_bytes(tokens, max(cfg.ffn_dim, cfg.num_attention_heads * cfg.attention_head_dim))
    else:
        experts = tuple(placed_expert_sizes(n, getattr(models, n), models.dtype) for n in ("transformer", "transformer_2"))
        dequant = estimate_dequant_bytes(largest_quantized_numel(models.transformer, models.transformer_2), itemsize)
    needs = MemoryNeeds(
        experts=experts,
        vae_bytes=module_bytes(models.vae),
        text_encoder_bytes=0 if lazy else te_bytes,  # a lazy encoder needs neither budget beside the experts
        activation_bytes=estimate_activation_bytes(tokens, cfg.num_attention_heads * cfg.attention_head_dim,
                                                   cfg.ffn_dim, itemsize),
        vae_activation_bytes=estimate_vae_decode_bytes(s.height, s.width, itemsize),
        dequant_bytes=dequant,
    )
    plan = plan_placement(needs, free_vram if vram_budget is None else vram_budget,
                          free_ram + _anonymous_host_bytes(parts) if ram_budget is None else ram_budget)
    if lazy:
        plan = replace(plan, needs=replace(plan.needs, text_encoder_bytes=te_bytes), text_encoder="file")
    return plan


def place_by_plan(models, device: torch.device, vram_budget: int | None = None, ram_budget: int | None = None,
                  settings=None, weights: str = "gguf", plan=None):
    """Plan (unless `plan` is given) and apply placement for a loaded `Models`: experts block by block,
    the VAE resident; with `weights="fp8"` each VRAM block is converted to FP8 as it is placed.

    Returns the `Plan`; its lines are logged, and a warning when blocks must be read from disk.
    """
    plan = plan or plan_models(models, device, vram_budget, ram_budget, settings, weights)
    needs = plan.needs
    lazy = isinstance(models.text_encoder, LazyTextEncoder)
    log = logging.getLogger(__name__)
    log.info("memory plan:\n%s", format_plan(plan))
    if plan.bytes_at("disk"):
        log.warning("%s", format_plan(plan).splitlines()[-1])
    models.vae.to(device)
    prepare = _prepare_block(models.dtype)
    if weights == "fp8":
        from .fp8_weights import fp8_prepare

        prepare = fp8_prepare(models, device, plan, prepare)
    models.streamers = {
        name: place_model(getattr(models, name), plan.locations(name), device, prepare=prepare)
        for name in ("transformer", "transformer_2")
    }
    # An eager text encoder shares VRAM with the experts only when both fit; otherwise it runs on the host.
    if not lazy and plan.vram_bytes + needs.text_encoder_bytes <= plan.vram_budget:
        models.text_encoder.to(device)
    elif not lazy:
        models.text_encoder = HostTextEncoder(models.text_encoder, device)
    return plan


class HostTextEncoder(nn.Module):
    """Runs the text encoder where its weights are and hands the embeddings to the compute device."""

    def __init__(self, encoder: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.encoder, self.device = encoder, device

    def forward(self, input_ids, attention_mask=None):
        here = next(self.encoder.parameters()).device
        out = self.encoder(input_ids.to(here), attention_mask.to(here) if attention_mask is not None else None)
        out.last_hidden_state = out.last_hidden_state.to(self.device)
        return out
