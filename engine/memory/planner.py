"""Memory planner: decide where every transformer block of each expert lives.

Blocks stay resident in VRAM where they fit, the rest are streamed from pinned host RAM,
and only what fits in neither is streamed from the mmapped GGUF file on disk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

Location = Literal["vram", "ram", "disk"]

GIB = 1024**3


class PlacementError(ValueError):
    """The budgets cannot hold the models, even with every block streamed from disk."""


@dataclass(frozen=True)
class ExpertSizes:
    """Byte sizes of one transformer expert as it sits in memory."""

    name: str  # "transformer" (high noise) or "transformer_2" (low noise)
    block_bytes: tuple[int, ...]  # one entry per block of `model.blocks`
    other_bytes: int  # embeddings, head, norms: small and used every step, so always resident


@dataclass(frozen=True)
class MemoryNeeds:
    """Everything the planner must fit, in bytes."""

    experts: tuple[ExpertSizes, ...]
    vae_bytes: int
    text_encoder_bytes: int
    # Peak workspace of the largest single step: a transformer forward at 32,760 tokens or a
    # VAE decode of 81 frames, whichever is larger (~4-5 GiB at 480x832 in fp16).
    activation_bytes: int
    # The process's own host memory: CUDA context, Python, latents, frames and the mp4 writer.
    host_reserve_bytes: int = 2 * GIB


@dataclass(frozen=True)
class Plan:
    """Where each component lives. `blocks[i]` pairs an expert's name with one location per block."""

    blocks: tuple[tuple[str, tuple[Location, ...]], ...]
    text_encoder: Literal["vram", "ram", "file"]  # "file": engine.models.text_encoder.LazyTextEncoder, read per job
    needs: MemoryNeeds
    vram_budget: int
    ram_budget: int
    stream_buffer_bytes: int  # VRAM for the block in use plus the one being prefetched

    def locations(self, expert: str) -> tuple[Location, ...]:
        for name, locs in self.blocks:
            if name == expert:
                return locs
        raise KeyError(f"no expert named {expert!r} in the plan; have {[n for n, _ in self.blocks]}")

    def bytes_at(self, where: Location) -> int:
        total = 0
        for expert, (_, locs) in zip(self.needs.experts, self.blocks):
            total += sum(b for b, loc in zip(expert.block_bytes, locs) if loc == where)
        return total

    @property
    def vram_bytes(self) -> int:
        """VRAM the experts and VAE hold while stories run, activations and stream buffers included."""
        n = self.needs
        others = sum(e.other_bytes for e in n.experts)
        return self.bytes_at("vram") + others + n.vae_bytes + n.activation_bytes + self.stream_buffer_bytes

    @property
    def ram_bytes(self) -> int:
        return self.bytes_at("ram") + self.needs.host_reserve_bytes

    def streamed_bytes_per_forward(self, expert: str) -> int:
        """Bytes copied host->device by one forward of `expert` (its non-resident blocks)."""
        sizes = next(e for e in self.needs.experts if e.name == expert)
        return sum(b for b, loc in zip(sizes.block_bytes, self.locations(expert)) if loc != "vram")


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers as stored (quantized GGUF bytes stay quantized)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def expert_sizes(name: str, model: torch.nn.Module) -> ExpertSizes:
    """Measure a transformer with a `blocks` ModuleList: per-block bytes and the rest."""
    blocks = tuple(module_bytes(b) for b in model.blocks)
    return ExpertSizes(name=name, block_bytes=blocks, other_bytes=module_bytes(model) - sum(blocks))


def estimate_activation_bytes(num_tokens: int, dim: int, ffn_dim: int, height: int, width: int, itemsize: int) -> int:
    """Peak workspace of one step: a transformer block or a VAE decode, whichever is larger.

    A block holds the hidden states, q/k/v, the FFN's inner activation twice (before and after
    GELU) and one dequantized FFN weight; the VAE decode peak was 4.8 GiB at 480x832 in bf16
    on the H100 and scales with the frame area.
    """
    block = (num_tokens * (8 * dim + 2 * ffn_dim) + dim * ffn_dim) * itemsize
    vae = int(4.8 * GIB * (height * width) / (480 * 832) * itemsize / 2)
    return max(block, vae)


def default_budgets(device: torch.device | str | None = None) -> tuple[int, int]:
    """(vram, ram) in bytes that this machine has free now; vram is 0 without CUDA."""
    import psutil

    vram = 0
    device = torch.device("cuda" if device is None else device)
    if device.type == "cuda" and torch.cuda.is_available():
        vram, _total = torch.cuda.mem_get_info(device)
    return vram, psutil.virtual_memory().available


def vram_floor(needs: MemoryNeeds) -> int:
    """Least VRAM that runs at all: every block streamed through two buffers of the largest block."""
    largest = max((max(e.block_bytes, default=0) for e in needs.experts), default=0)
    others = sum(e.other_bytes for e in needs.experts)
    return needs.activation_bytes + needs.vae_bytes + others + 2 * largest


def plan_placement(needs: MemoryNeeds, vram_budget: int, ram_budget: int) -> Plan:
    """Fill VRAM with whole blocks, then pinned RAM, then leave the rest on disk.

    The experts share VRAM evenly (block i of each before block i+1 of either), because each runs
    the same number of forwards per segment, so the bytes streamed per segment are the same
    whichever expert keeps a block, and an even split keeps both experts' streams short.
    """
    for label, value in (("vram_budget", vram_budget), ("ram_budget", ram_budget)):
        if value < 0:
            raise PlacementError(f"{label} must be >= 0 bytes, got {value}")
    others = sum(e.other_bytes for e in needs.experts)
    all_blocks = sum(sum(e.block_bytes) for e in needs.experts)
    resident_need = needs.activation_bytes + needs.vae_bytes + others + all_blocks

    floor = vram_floor(needs)
    if floor > vram_budget:
        largest = max((max(e.block_bytes, default=0) for e in needs.experts), default=0)
        raise PlacementError(
            f"VRAM budget {_gib(vram_budget)} is below the floor of {_gib(floor)} needed even with "
            f"every block streamed from disk: activations {_gib(needs.activation_bytes)} + VAE "
            f"{_gib(needs.vae_bytes)} + non-block weights {_gib(others)} + 2 stream buffers of the "
            f"largest block {_gib(largest)}"
        )
    te_where: Literal["vram", "ram"] = "vram" if needs.text_encoder_bytes <= vram_budget else "ram"
    if te_where == "ram" and needs.text_encoder_bytes + needs.host_reserve_bytes > ram_budget:
        raise PlacementError(
            f"text encoder of {_gib(needs.text_encoder_bytes)} fits neither the VRAM budget "
            f"{_gib(vram_budget)} nor the RAM budget {_gib(ram_budget)} less the process's own "
            f"{_gib(needs.host_reserve_bytes)}"
        )

    locs: list[list[Location]] = [["disk"] * len(e.block_bytes) for e in needs.experts]
    if resident_need <= vram_budget:
        locs = [["vram"] * len(e.block_bytes) for e in needs.experts]
        buffers = 0
    else:
        buffers = 2 * max(max(e.block_bytes, default=0) for e in needs.experts)
        vram_left = vram_budget - floor
        ram_left = ram_budget - needs.host_reserve_bytes
        order = _interleaved(needs.experts)
        for e, i in order:  # VRAM first, in the interleaved order
            size = needs.experts[e].block_bytes[i]
            if size <= vram_left:
                locs[e][i] = "vram"
                vram_left -= size
        for e, i in order:  # then pinned RAM for what is left
            size = needs.experts[e].block_bytes[i]
            if locs[e][i] == "disk" and size <= ram_left:
                locs[e][i] = "ram"
                ram_left -= size

    return Plan(
        blocks=tuple((e.name, tuple(l)) for e, l in zip(needs.experts, locs)),
        text_encoder=te_where,
        needs=needs,
        vram_budget=vram_budget,
        ram_budget=ram_budget,
        stream_buffer_bytes=buffers,
    )


def _interleaved(experts: Sequence[ExpertSizes]) -> list[tuple[int, int]]:
    """(expert, block) pairs ordered block 0 of every expert, then block 1, ..."""
    longest = max((len(e.block_bytes) for e in experts), default=0)
    return [(e, i) for i in range(longest) for e in range(len(experts)) if i < len(experts[e].block_bytes)]


def format_plan(plan: Plan) -> str:
    """One line per component with its size and where it lives, then the totals against the budgets."""
    n = plan.needs
    where = {"vram": "vram (encodes all prompts first, then freed)", "ram": "ram (runs on the host)",
             "file": "file -> vram, only for prompts not in the cache: the whole model before the experts are "
                     "placed, after that layers streamed from disk through the free VRAM; freed after each job, "
                     "never held in RAM"}[plan.text_encoder]
    lines = [f"text_encoder   {_gib(n.text_encoder_bytes):>10}  {where}"]
    for sizes, (name, locs) in zip(n.experts, plan.blocks):
        parts = []
        for where in ("vram", "ram", "disk"):
            idx = [i for i, l in enumerate(locs) if l == where]
            if idx:
                nbytes = sum(sizes.block_bytes[i] for i in idx)
                parts.append(f"{len(idx)} blocks {_gib(nbytes)} {where} [{_ranges(idx)}]")
        total = sum(sizes.block_bytes) + sizes.other_bytes
        lines.append(f"{name:<14} {_gib(total):>10}  non-block {_gib(sizes.other_bytes)} vram; " + "; ".join(parts))
    lines.append(f"vae            {_gib(n.vae_bytes):>10}  vram")
    lines.append(f"activations    {_gib(n.activation_bytes):>10}  vram")
    if plan.stream_buffer_bytes:
        lines.append(f"stream buffers {_gib(plan.stream_buffer_bytes):>10}  vram (block in use + prefetch)")
    lines.append(f"total VRAM {_gib(plan.vram_bytes)} of budget {_gib(plan.vram_budget)}; "
                 f"pinned RAM {_gib(plan.ram_bytes)} (incl. process {_gib(n.host_reserve_bytes)}) of budget "
                 f"{_gib(plan.ram_budget)}; disk-streamed {_gib(plan.bytes_at('disk'))}")
    return "\n".join(lines)


def _ranges(idx: list[int]) -> str:
    out, start = [], idx[0]
    for a, b in zip(idx, idx[1:] + [None]):
        if b != a + 1:
            out.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ",".join(out)


def _gib(nbytes: int) -> str:
    return f"{nbytes / GIB:.2f} GiB"
