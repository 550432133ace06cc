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
    MemoryNeeds, default_budgets, estimate_activation_bytes, expert_sizes, format_plan, module_bytes,
    plan_placement,
)
from ..memory.streaming import place_model
from .text_encoder import LazyTextEncoder


def place_by_plan(models, device: torch.device, vram_budget: int | None = None, ram_budget: int | None = None,
                  settings=None):
    """Plan and apply placement for a loaded `Models`: experts block by block, the VAE resident.

    Budgets default to what the machine has: free VRAM now, and available RAM plus what the
    models loaded on the host hold (they move out of it). Returns the `Plan`; its lines are logged.
    """
    s = settings or GenerationSettings()
    cfg = models.transformer.config
    lazy = isinstance(models.text_encoder, LazyTextEncoder)  # holds no weights; read from its files per job
    te_bytes = models.text_encoder.nbytes if lazy else module_bytes(models.text_encoder)
    parts = (models.transformer, models.transformer_2, models.vae) + (() if lazy else (models.text_encoder,))
    free_vram, free_ram = default_budgets(device)
    on_host = sum(module_bytes(m) for m in parts if next(m.parameters()).device.type == "cpu")
    tokens = s.num_latent_frames * (s.height // 16) * (s.width // 16)  # after the 1x2x2 patching
    needs = MemoryNeeds(
        experts=(expert_sizes("transformer", models.transformer), expert_sizes("transformer_2", models.transformer_2)),
        vae_bytes=module_bytes(models.vae),
        text_encoder_bytes=0 if lazy else te_bytes,  # a lazy encoder needs neither budget beside the experts
        activation_bytes=estimate_activation_bytes(tokens, cfg.num_attention_heads * cfg.attention_head_dim,
                                                   cfg.ffn_dim, s.height, s.width, models.dtype.itemsize),
    )
    plan = plan_placement(needs, free_vram if vram_budget is None else vram_budget,
                          free_ram + on_host if ram_budget is None else ram_budget)
    if lazy:
        plan = replace(plan, needs=replace(plan.needs, text_encoder_bytes=te_bytes), text_encoder="file")
    logging.getLogger(__name__).info("memory plan:\n%s", format_plan(plan))
    models.vae.to(device)
    models.streamers = {
        name: place_model(getattr(models, name), plan.locations(name), device) for name in ("transformer", "transformer_2")
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
