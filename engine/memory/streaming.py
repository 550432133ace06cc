"""Block streamer: keep some transformer blocks in host memory and copy each into VRAM just ahead of use.

Copies run on a side CUDA stream, one block ahead, so they overlap the previous block's compute.
Exactly one host copy of each streamed block is kept (pinned for RAM, the mmapped file for disk).
A disk block's file part passes through a pinned staging buffer, and its file pages leave the
process right after; its other parts (LoRA factors, cast tensors) stay pinned. At most
`STREAM_BUFFERS` block copies are alive in VRAM: the planner counts exactly that many.
"""
from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from .host import file_mappings, page_out, release_host_memory
from .planner import STAGING_BUFFERS, STREAM_BUFFERS, Location


@dataclass
class StreamStats:
    """Counters for the benchmark; `wait_s` needs `measure_waits=True` and a CUDA device."""

    ram_bytes: int = 0  # pinned host -> device
    disk_bytes: int = 0  # mmapped GGUF -> staging -> device: every byte counted, it may come from the disk
    copies: int = 0
    throttle_waits: int = 0  # times the host waited for an earlier streamed block to finish
    wait_s: float = 0.0  # time the compute stream stalled waiting for a copy
    _wait_events: list = field(default_factory=list, repr=False)

    def collect_waits(self) -> None:
        """Add up the stall times recorded so far (synchronizes on their events)."""
        for start, end in self._wait_events:
            end.synchronize()
            self.wait_s += start.elapsed_time(end) / 1000.0
        self._wait_events.clear()


@dataclass
class _Slot:
    """One streamed block: its host tensors and, while copied in, their device twins."""

    block: nn.Module
    source: Location  # "ram" or "disk"
    host: list[tuple[nn.Module, str, torch.Tensor]]  # (owner module, attribute name, host tensor)
    device_copies: list[torch.Tensor] | None = None
    ready: torch.cuda.Event | None = None
    nbytes: int = 0
    file_idx: tuple[int, ...] = ()  # disk blocks: which host tensors are views of a mapped file
    file_nbytes: int = 0


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _in_spans(t: torch.Tensor, spans: list[tuple[int, int]]) -> bool:
    return t.device.type == "cpu" and any(a <= t.data_ptr() < b for a, b in spans)


def _tensors_of(block: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
    out = []
    for mod in block.modules():
        for name, p in mod._parameters.items():
            if p is not None:
                out.append((mod, name, p))
        for name, b in mod._buffers.items():
            if b is not None:
                out.append((mod, name, b))
    return out


class BlockStreamer:
    """Hooks on a ModuleList of blocks that stream the non-resident ones through VRAM.

    `locations[i]` says where block i lives: "vram" blocks are moved to `device` once; "ram"
    blocks are pinned (when CUDA is present) and copied in just ahead of use; "disk" blocks are
    copied from whatever host tensors they hold (mmapped file views) and counted as disk reads.
    On a CPU device the same code runs with a plain clone as the copy, so tests cover it.
    """

    def __init__(
        self,
        blocks: nn.ModuleList,
        locations: Sequence[Location],
        device: torch.device | str,
        measure_waits: bool = False,
        prepare: Callable[[nn.Module], None] | None = None,
    ) -> None:
        if len(locations) != len(blocks):
            raise ValueError(f"got {len(locations)} locations for {len(blocks)} blocks")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.measure_waits = measure_waits and self.cuda
        self.stats = StreamStats()
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.slots: dict[int, _Slot] = {}
        self._order: list[int] = []  # streamed block indices in forward order
        self._handles = []
        self._pinned_buffers: list[torch.Tensor] = []
        self._done: deque = deque()  # compute-stream events, one after each streamed block's kernels
        self._staging: list[torch.Tensor] = []
        self._staging_busy: list = []  # per staging buffer: the event of the copy still reading it
        self._next_staging = 0
        self._spans = spans = file_mappings()  # where mapped files' pages live
        for i, (block, where) in enumerate(zip(blocks, locations)):
            if prepare is not None:
                prepare(block)  # e.g. materialize its LoRA factors now, into memory the plan counted
            if where == "vram":
                # detach(): Module.to() swaps .data in place, so keep views of the host storage itself
                old = [t.detach() for _, _, t in _tensors_of(block)] if self.cuda else []
                block.to(self.device)
                page_out(old, spans)  # a mapped file's pages leave the process as each block moves
                continue
            host = _tensors_of(block)
            loaded = [t for _, _, t in host]  # as loaded: views of a mapped file where they came from one
            file_idx = tuple(k for k, (_, _, t) in enumerate(host) if _in_spans(t, spans)) if where == "disk" else ()
            keep = [k for k in range(len(host)) if k not in file_idx]  # everything a RAM block holds
            if self.cuda and keep:
                flat, pinned = _pin_block([host[k] for k in keep])
                self._pinned_buffers.append(flat)
                for k, (mod, name, t) in zip(keep, pinned):  # point the module at the pinned copy; the old one is freed
                    _set(mod, name, t)
                    host[k] = (mod, name, t)
            page_out(loaded, spans)  # the loaded pages leave the process; a disk block re-reads its file per use
            file_nbytes = sum(_nbytes(host[k][2]) for k in file_idx)
            nbytes = sum(_nbytes(t) for _, _, t in host)
            self.slots[i] = _Slot(block=block, source=where, host=host, nbytes=nbytes, file_idx=file_idx,
                                  file_nbytes=file_nbytes)
            self._order.append(i)
        largest_file = max((sum(-(-_nbytes(s.host[k][2]) // 64) * 64 for k in s.file_idx)
                            for s in self.slots.values()), default=0)  # 64-byte aligned, as _stage packs them
        for _ in range(STAGING_BUFFERS if largest_file else 0):
            buf = torch.empty(largest_file, dtype=torch.uint8)
            if self.cuda:
                _register(buf)
            self._staging.append(buf)
            self._staging_busy.append(None)
        # Every block gets a pre-hook so a resident block can start the next streamed block's copy.
        for i, block in enumerate(blocks):
            self._handles.append(block.register_forward_pre_hook(self._make_pre_hook(i)))
            if i in self.slots:
                self._handles.append(block.register_forward_hook(self._make_post_hook(i)))

    # -- the copy in ---------------------------------------------------------------------------
    def prefetch(self, i: int) -> None:
        """Start copying block i into VRAM on the side stream (no-op if already there)."""
        slot = self.slots[i]
        if slot.device_copies is not None:
            return
        if self.cuda:
            self._throttle()
        sources = [t for _, _, t in slot.host]
        staging = None
        if slot.file_idx:
            staging = self._stage(slot, sources)
        if self.cuda:
            assert self.copy_stream is not None
            # The copy must not start before the compute stream has finished with the buffer
            # memory it may reuse, hence the wait on the current stream.
            self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.copy_stream):
                slot.device_copies = [t.to(self.device, non_blocking=True) for t in sources]
                slot.ready = torch.cuda.Event(enable_timing=False)
                slot.ready.record(self.copy_stream)
            if staging is not None:
                self._staging_busy[staging] = slot.ready  # not refilled before this copy has read it
        else:
            slot.device_copies = [t.clone() for t in sources]
        self.stats.disk_bytes += slot.file_nbytes
        self.stats.ram_bytes += slot.nbytes - slot.file_nbytes
        self.stats.copies += 1

    def _stage(self, slot: _Slot, sources: list[torch.Tensor]) -> int:
        """Read a disk block's file part into the next staging buffer, then drop its file pages."""
        k = self._next_staging
        self._next_staging = (k + 1) % len(self._staging)
        if self._staging_busy[k] is not None:
            self._staging_busy[k].synchronize()  # its previous copy to VRAM must be done
            self._staging_busy[k] = None
        buf, offset = self._staging[k], 0
        for idx in slot.file_idx:
            t = slot.host[idx][2]
            n = _nbytes(t)
            view = buf[offset : offset + n].view(t.dtype).view(t.shape)
            view.copy_(t.detach())  # the read: page faults on the mapped file
            if hasattr(t, "quant_type"):  # GGUFParameter: keep the quantization type with the bytes
                view = type(t)(view, quant_type=t.quant_type)
            sources[idx] = view
            offset += -(-n // 64) * 64
        page_out([slot.host[idx][2] for idx in slot.file_idx], self._spans)  # no copy of it stays resident
        return k

    def _throttle(self) -> None:
        """Wait until at most STREAM_BUFFERS - 2 earlier streamed blocks still run, so that with the
        block in use and the one about to be copied no more than STREAM_BUFFERS copies are alive."""
        while self._done and self._done[0].query():
            self._done.popleft()
        while len(self._done) > STREAM_BUFFERS - 2:
            self._done.popleft().synchronize()
            self.stats.throttle_waits += 1

    def _next_streamed(self, i: int) -> int | None:
        later = [j for j in self._order if j > i]
        return later[0] if later else None

    def prefetch_first(self) -> None:
        """Start the first streamed block's copy; called as the whole model's forward begins."""
        if self._order:
            self.prefetch(self._order[0])

    def _make_pre_hook(self, i: int):
        def hook(_module, _args):
            if i in self.slots:
                self._swap_in(i)
            nxt = self._next_streamed(i)
            if nxt is not None:
                self.prefetch(nxt)  # overlaps this block's compute

        return hook

    def _swap_in(self, i: int) -> None:
        self.prefetch(i)  # no-op when the previous block already started it
        slot = self.slots[i]
        if self.cuda:
            compute = torch.cuda.current_stream(self.device)
            if self.measure_waits:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(compute)
            compute.wait_event(slot.ready)
            if self.measure_waits:
                end.record(compute)
                self.stats._wait_events.append((start, end))
            for t in slot.device_copies:
                # Made on the copy stream: tell the allocator the compute stream uses it too, so
                # its memory is not handed out again before this block's kernels have run.
                t.record_stream(compute)
        for (mod, name, _), t in zip(slot.host, slot.device_copies):
            _set(mod, name, t)

    def _make_post_hook(self, i: int):
        def hook(_module, _args, _output):
            slot = self.slots[i]
            for mod, name, t in slot.host:
                _set(mod, name, t)
            slot.device_copies = None  # drop the VRAM copy; only the host copy stays
            slot.ready = None
            if self.cuda:
                done = torch.cuda.Event(enable_timing=False)
                done.record(torch.cuda.current_stream(self.device))
                self._done.append(done)

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _pin_block(host: list[tuple[nn.Module, str, torch.Tensor]]):
    """Copy a block's tensors into one page-locked buffer of exactly their size.

    torch's pinned allocator rounds every allocation up to a power of two, which would cost up
    to 2x host RAM; registering one exact-size buffer per block keeps a single copy.
    """
    # fork() copies page-locked pages into the child at once, so a subprocess started with a
    # preexec_fn (imageio-ffmpeg's default, which rules out vfork) stalls the whole process for
    # seconds per mp4; without it CPython uses vfork and nothing is copied.
    os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")
    align = 64
    offsets, total = [], 0
    for _, _, t in host:
        offsets.append(total)
        total += -(-t.numel() * t.element_size() // align) * align
    flat = torch.empty(total, dtype=torch.uint8)
    _register(flat)
    pinned = []
    for (mod, name, t), off in zip(host, offsets):
        nbytes = t.numel() * t.element_size()
        view = flat[off : off + nbytes].view(t.dtype).view(t.shape)
        view.copy_(t.detach())
        if hasattr(t, "quant_type"):  # GGUFParameter: keep the quantization type with the bytes
            view = type(t)(view, quant_type=t.quant_type)
        pinned.append((mod, name, view))
    return flat, pinned


def _register(flat: torch.Tensor) -> None:
    """Page-lock an exact-size host buffer (torch's pinned allocator would round it up to a power of two)."""
    err = torch.cuda.cudart().cudaHostRegister(flat.data_ptr(), flat.numel(), 0)
    if int(err) != 0:
        raise RuntimeError(f"cudaHostRegister of {flat.numel()} bytes failed with error {int(err)}")


def _set(mod: nn.Module, name: str, t: torch.Tensor) -> None:
    """Swap a parameter or buffer without touching the module's structure."""
    if name in mod._parameters:
        if isinstance(t, nn.Parameter):
            mod._parameters[name] = t
        else:
            mod._parameters[name] = nn.Parameter(t, requires_grad=False)
    else:
        mod._buffers[name] = t


def place_model(
    model: nn.Module,
    locations: Sequence[Location],
    device: torch.device | str,
    measure_waits: bool = False,
    prepare: Callable[[nn.Module], None] | None = None,
) -> BlockStreamer:
    """Move a transformer's non-block parts to `device` and stream its blocks as planned.

    `prepare(module)` runs on each block and each non-block child just before it is placed.
    """
    device = torch.device(device)
    for name, child in model.named_children():
        if name != "blocks":
            if prepare is not None:
                prepare(child)
            child.to(device)
    for name, p in list(model._parameters.items()):
        if p is not None:
            _set(model, name, p.to(device))
    for name, b in list(model._buffers.items()):
        if b is not None:
            model._buffers[name] = b.to(device)
    streamer = BlockStreamer(model.blocks, locations, device, measure_waits=measure_waits, prepare=prepare)
    streamer._handles.append(model.register_forward_pre_hook(lambda _m, _a: streamer.prefetch_first()))
    release_host_memory()
    return streamer
