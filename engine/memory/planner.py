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


STREAM_BUFFERS = 3  # VRAM copies of streamed blocks alive at once: in use, the one before still running, the prefetch
STAGING_BUFFERS = 2  # pinned host buffers that file-read blocks pass through (one filling, one copying)


@dataclass(frozen=True)
class ExpertSizes:
    """Byte sizes of one transformer expert as it sits in memory, LoRAs included."""

    name: str  # "transformer" (high noise) or "transformer_2" (low noise)
    block_bytes: tuple[int, ...]  # one entry per block of `model.blocks`: everything the block holds
    other_bytes: int  # embeddings, head, norms: small and used every step, so always resident
    # Of each block, the bytes a mapped file holds (the quantized weights), which a block left on
    # disk reads every forward; the rest (LoRA factors, small tensors cast on load) stays in pinned
    # RAM even then. None: all of it.
    block_file_bytes: tuple[int, ...] | None = None
    lora_bytes: int = 0  # of the above, LoRA factors (for the plan's display)

    def file_bytes(self, i: int) -> int:
        return self.block_bytes[i] if self.block_file_bytes is None else self.block_file_bytes[i]

    def resident_bytes(self, i: int) -> int:
        """What block i keeps in RAM when its file part is read from disk."""
        return self.block_bytes[i] - self.file_bytes(i)


@dataclass(frozen=True)
class MemoryNeeds:
    """Everything the planner must fit, in bytes."""

    experts: tuple[ExpertSizes, ...]
    vae_bytes: int
    text_encoder_bytes: int
    # Peak workspace of one transformer step beside its weights: hidden states, q/k/v, the FFN's
    # inner activation (~4.2 GiB at 32,760 tokens in fp16).
    activation_bytes: int
    # The process's own host memory: CUDA context, Python, latents, frames and the mp4 writer. Measured
    # beside the weights on an H200 (bench/README.md): 1.6 GiB anonymous and 0.5 GiB of mapped pages,
    # growing by each finished segment's frames; 2 GiB let a plan that fills RAM end 0.9 GiB over it.
    host_reserve_bytes: int = int(2.5 * GIB)
    vae_activation_bytes: int = 0  # peak of a VAE decode; it runs when no block is streamed
    dequant_bytes: int = 0  # temporaries of dequantizing the largest quantized linear (W + LoRA delta in place)


@dataclass(frozen=True)
class Plan:
    """Where each component lives. `blocks[i]` pairs an expert's name with one location per block."""

    blocks: tuple[tuple[str, tuple[Location, ...]], ...]
    text_encoder: Literal["vram", "ram", "file"]  # "file": engine.models.text_encoder.LazyTextEncoder, read per job
    needs: MemoryNeeds
    vram_budget: int
    ram_budget: int
    stream_buffer_bytes: int  # VRAM for streamed block copies alive at once (STREAM_BUFFERS of the largest)
    staging_bytes: int = 0  # pinned RAM that blocks read from the file pass through

    def locations(self, expert: str) -> tuple[Location, ...]:
        for name, locs in self.blocks:
            if name == expert:
                return locs
        raise KeyError(f"no expert named {expert!r} in the plan; have {[n for n, _ in self.blocks]}")

    def _sum(self, where: Location, part) -> int:
        return sum(part(e, i) for e, (_, locs) in zip(self.needs.experts, self.blocks)
                   for i, loc in enumerate(locs) if loc == where)

    def bytes_at(self, where: Location) -> int:
        return self._sum(where, lambda e, i: e.block_bytes[i])

    @property
    def disk_resident_bytes(self) -> int:
        """RAM held by blocks on disk: their LoRA factors and other parts the file does not hold."""
        return self._sum("disk", lambda e, i: e.resident_bytes(i))

    @property
    def workspace_bytes(self) -> int:
        """Peak VRAM beside the resident weights: a transformer step or a VAE decode, whichever is larger."""
        n = self.needs
        return max(n.activation_bytes + n.dequant_bytes + self.stream_buffer_bytes, n.vae_activation_bytes)

    @property
    def vram_bytes(self) -> int:
        """VRAM the experts and VAE hold while stories run, the workspace included."""
        n = self.needs
        others = sum(e.other_bytes for e in n.experts)
        return self.bytes_at("vram") + others + n.vae_bytes + self.workspace_bytes

    @property
    def ram_bytes(self) -> int:
        return (self.bytes_at("ram") + self.disk_resident_bytes + self.staging_bytes
                + self.needs.host_reserve_bytes)

    def streamed_bytes_per_forward(self, expert: str) -> int:
        """Bytes copied host->device by one forward of `expert` (its non-resident blocks)."""
        sizes = next(e for e in self.needs.experts if e.name == expert)
        return sum(b for b, loc in zip(sizes.block_bytes, self.locations(expert)) if loc != "vram")

    def disk_bytes_per_forward(self, expert: str) -> int:
        """Bytes read from the expert's file by one forward (its blocks on disk, file part only)."""
        sizes = next(e for e in self.needs.experts if e.name == expert)
        return sum(sizes.file_bytes(i) for i, loc in enumerate(self.locations(expert)) if loc == "disk")


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers as stored (quantized GGUF bytes stay quantized)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def expert_sizes(name: str, model: torch.nn.Module) -> ExpertSizes:
    """Measure a transformer with a `blocks` ModuleList: per-block bytes and the rest."""
    blocks = tuple(module_bytes(b) for b in model.blocks)
    return ExpertSizes(name=name, block_bytes=blocks, other_bytes=module_bytes(model) - sum(blocks))


def estimate_activation_bytes(num_tokens: int, dim: int, ffn_dim: int, itemsize: int) -> int:
    """Peak activations of one transformer block: hidden states, q/k/v and the FFN inner activation twice."""
    return num_tokens * (8 * dim + 2 * ffn_dim) * itemsize


def estimate_vae_decode_bytes(height: int, width: int, itemsize: int) -> int:
    """The Wan VAE decode of 81 frames peaked at 4.8 GiB at 480x832 in bf16 (H100); it scales with the area."""
    return int(4.8 * GIB * (height * width) / (480 * 832) * itemsize / 2)


def estimate_dequant_bytes(largest_numel: int, itemsize: int) -> int:
    """diffusers dequantizes K-quants in fp16 through ~6 bytes per value of temporaries, then casts."""
    return largest_numel * (6 + (0 if itemsize == 2 else itemsize))


def default_budgets(device: torch.device | str | None = None) -> tuple[int, int]:
    """(vram, ram) in bytes that this machine has free now; vram is 0 without CUDA."""
    import psutil

    vram = 0
    device = torch.device("cuda" if device is None else device)
    if device.type == "cuda" and torch.cuda.is_available():
        vram, _total = torch.cuda.mem_get_info(device)
    return vram, psutil.virtual_memory().available


def _largest_block(needs: MemoryNeeds) -> int:
    return max((max(e.block_bytes, default=0) for e in needs.experts), default=0)


def vram_floor(needs: MemoryNeeds) -> int:
    """Least VRAM that runs at all: every block streamed through the stream buffers."""
    others = sum(e.other_bytes for e in needs.experts)
    step = needs.activation_bytes + needs.dequant_bytes + STREAM_BUFFERS * _largest_block(needs)
    return needs.vae_bytes + others + max(step, needs.vae_activation_bytes)


def plan_placement(needs: MemoryNeeds, vram_budget: int, ram_budget: int) -> Plan:
    """Fill VRAM with whole blocks, then pinned RAM, then leave the rest on disk.

    The experts share VRAM evenly (block i of each before block i+1 of either), because each runs
    the same number of forwards per segment, so the bytes streamed per segment are the same
    whichever expert keeps a block, and an even split keeps both experts' streams short. Blocks on
    disk still hold their non-file parts and the staging buffers in RAM, so pinned blocks give way
    to disk until those fit too.
    """
    for label, value in (("vram_budget", vram_budget), ("ram_budget", ram_budget)):
        if value < 0:
            raise PlacementError(f"{label} must be >= 0 bytes, got {value}")
    others = sum(e.other_bytes for e in needs.experts)
    all_blocks = sum(sum(e.block_bytes) for e in needs.experts)
    workspace = max(needs.activation_bytes + needs.dequant_bytes, needs.vae_activation_bytes)
    resident_need = needs.vae_bytes + others + all_blocks + workspace

    floor = vram_floor(needs)
    if floor > vram_budget:
        raise PlacementError(
            f"VRAM budget {_gib(vram_budget)} is below the floor of {_gib(floor)} needed even with "
            f"every block streamed from disk: activations {_gib(needs.activation_bytes)} + dequantization "
            f"{_gib(needs.dequant_bytes)} + {STREAM_BUFFERS} stream buffers of the largest block "
            f"{_gib(_largest_block(needs))} (or the VAE decode {_gib(needs.vae_activation_bytes)}) + VAE "
            f"{_gib(needs.vae_bytes)} + non-block weights {_gib(others)}"
        )
    te_where: Literal["vram", "ram"] = "vram" if needs.text_encoder_bytes <= vram_budget else "ram"
    if te_where == "ram" and needs.text_encoder_bytes + needs.host_reserve_bytes > ram_budget:
        raise PlacementError(
            f"text encoder of {_gib(needs.text_encoder_bytes)} fits neither the VRAM budget "
            f"{_gib(vram_budget)} nor the RAM budget {_gib(ram_budget)} less the process's own "
            f"{_gib(needs.host_reserve_bytes)}"
        )

    locs: list[list[Location]] = [["disk"] * len(e.block_bytes) for e in needs.experts]
    buffers = staging = 0
    if resident_need <= vram_budget:
        locs = [["vram"] * len(e.block_bytes) for e in needs.experts]
    else:
        buffers = STREAM_BUFFERS * _largest_block(needs)
        vram_left = vram_budget - floor
        ram_left = ram_budget - needs.host_reserve_bytes
        order = _interleaved(needs.experts)
        for e, i in order:  # VRAM first, in the interleaved order
            size = needs.experts[e].block_bytes[i]
            if size <= vram_left:
                locs[e][i] = "vram"
                vram_left -= size
        pinned = []
        for e, i in order:  # then pinned RAM for what is left
            size = needs.experts[e].block_bytes[i]
            if locs[e][i] == "disk" and size <= ram_left:
                locs[e][i] = "ram"
                ram_left -= size
                pinned.append((e, i))
        while True:  # disk blocks' resident parts and the staging buffers need RAM too
            disk = [(e, i) for e, i in order if locs[e][i] == "disk"]
            staging = STAGING_BUFFERS * max((needs.experts[e].file_bytes(i) for e, i in disk), default=0)
            held = sum(needs.experts[e].block_bytes[i] for e, i in pinned)
            held += sum(needs.experts[e].resident_bytes(i) for e, i in disk) + staging
            if held <= ram_budget - needs.host_reserve_bytes:
                break
            if not pinned:
                raise PlacementError(
                    f"RAM budget {_gib(ram_budget)} less the process's own {_gib(needs.host_reserve_bytes)} "
                    f"cannot hold even the parts of disk-streamed blocks that stay in RAM: "
                    f"{_gib(held - staging)} plus {STAGING_BUFFERS} staging buffers of {_gib(staging // STAGING_BUFFERS)}"
                )
            e, i = pinned.pop()
            locs[e][i] = "disk"

    return Plan(
        blocks=tuple((e.name, tuple(l)) for e, l in zip(needs.experts, locs)),
        text_encoder=te_where,
        needs=needs,
        vram_budget=vram_budget,
        ram_budget=ram_budget,
        stream_buffer_bytes=buffers,
        staging_bytes=staging,
    )


def _interleaved(experts: Sequence[ExpertSizes]) -> list[tuple[int, int]]:
    """(expert, block) pairs ordered block 0 of every expert, then block 1, ..."""
    longest = max((len(e.block_bytes) for e in experts), default=0)
    return [(e, i) for i in range(longest) for e in range(len(experts)) if i < len(experts[e].block_bytes)]


def format_plan(plan: Plan, forwards_per_segment: int = 2) -> str:
    """One line per component with its size and where it lives, then the totals against the budgets.

    `forwards_per_segment`: forwards of each expert per segment (2 of the 4 steps each by default).
    """
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
                extra = ""
                if where == "disk":
                    kept = sum(sizes.resident_bytes(i) for i in idx)
                    extra = f" (file {_gib(nbytes - kept)}, in RAM {_gib(kept)})"
                parts.append(f"{len(idx)} blocks {_gib(nbytes)} {where}{extra} [{_ranges(idx)}]")
        total = sum(sizes.block_bytes) + sizes.other_bytes
        lora = f" incl. LoRAs {_gib(sizes.lora_bytes)};" if sizes.lora_bytes else ""
        lines.append(f"{name:<14} {_gib(total):>10} {lora} non-block {_gib(sizes.other_bytes)} vram; " + "; ".join(parts))
    lines.append(f"vae            {_gib(n.vae_bytes):>10}  vram")
    lines.append(f"workspace      {_gib(plan.workspace_bytes):>10}  vram: activations {_gib(n.activation_bytes)} + "
                 f"dequantization {_gib(n.dequant_bytes)} + stream buffers {_gib(plan.stream_buffer_bytes)}, "
                 f"or the VAE decode {_gib(n.vae_activation_bytes)}, whichever is larger")
    if plan.staging_bytes:
        lines.append(f"staging        {_gib(plan.staging_bytes):>10}  pinned ram (file-read blocks pass through it)")
    disk = sum(plan.disk_bytes_per_forward(name) for name, _ in plan.blocks)
    lines.append(f"total VRAM {_gib(plan.vram_bytes)} of budget {_gib(plan.vram_budget)}; "
                 f"RAM {_gib(plan.ram_bytes)} (incl. process {_gib(n.host_reserve_bytes)}) of budget "
                 f"{_gib(plan.ram_budget)}; read from disk per segment {_gib(disk * forwards_per_segment)}")
    if disk:
        lines.append(disk_warning(plan, forwards_per_segment))
    return "\n".join(lines)


def disk_warning(plan: Plan, forwards_per_segment: int = 2) -> str:
    """Why this plan reads from disk every segment, in numbers."""
    n = plan.needs
    blocks = sum(sum(e.block_bytes) for e in n.experts)
    held = plan.bytes_at("vram") + plan.bytes_at("ram")
    count = sum(locs.count("disk") for _, locs in plan.blocks)
    disk = sum(plan.disk_bytes_per_forward(name) for name, _ in plan.blocks)
    return (f"NOT ALL RESIDENT: the experts' blocks need {_gib(blocks)} but VRAM and pinned RAM hold {_gib(held)} "
            f"under these budgets; {count} blocks stay in the mapped files and {_gib(disk * forwards_per_segment)} "
            f"is read from disk every segment")


def _ranges(idx: list[int]) -> str:
    out, start = [], idx[0]
    for a, b in zip(idx, idx[1:] + [None]):
        if b != a + 1:
            out.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ",".join(out)


def _gib(nbytes: int) -> str:
    return f"{nbytes / GIB:.2f} GiB"
