"""Host memory of the weights: read GGUF and safetensors files as mapped views, drop placed pages, trim the heap.

These keep the process's RAM to the pinned blocks the planner chose, during loading too.
"""
from __future__ import annotations

from typing import Sequence

import torch


def read_gguf_mapped(path) -> dict[str, torch.Tensor]:
    """A GGUF file's tensors as views of a copy-on-write mapping, quantized ones as GGUFParameter.

    diffusers' own reader copies every tensor into RAM; these views cost nothing until read, and
    the planner's placement pages each block out of the process again once it has moved.
    """
    import warnings

    import gguf
    from diffusers.quantizers.gguf.utils import GGUFParameter

    reader = gguf.GGUFReader(str(path), mode="c")  # "c": a stray write makes a private copy, never a crash
    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that numpy views may be read-only
        for t in reader.tensors:
            data = torch.from_numpy(t.data)
            out[t.name] = data if t.tensor_type in plain else GGUFParameter(data, quant_type=t.tensor_type)
    return out


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors_mapped(path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors as views of a copy-on-write mapping; nothing is read until used.

    `safetensors.torch.load_file` copies every tensor into anonymous memory; these views stay
    file-backed, so the LoRA factors cost no RAM until placement copies them where they run.
    """
    import json
    import mmap
    import struct

    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
        size = f.seek(0, 2)
        # ACCESS_COPY: an in-place op on a view makes a private page instead of writing the file
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
    base = 8 + header_len
    raw = torch.frombuffer(mapped, dtype=torch.uint8) if mapped is not None else torch.empty(0, dtype=torch.uint8)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, not one of {sorted(_SAFETENSORS_DTYPES)}")
        start, end = info["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        out[name] = raw[base + start : base + end].view(dtype).reshape(info["shape"])
    return out


def file_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's private file mappings, from /proc/self/maps (empty elsewhere)."""
    spans = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                # address perms offset dev inode [path]: a private mapping of a real file
                if len(parts) >= 6 and parts[1].endswith("p") and parts[4] != "0" and parts[5].startswith("/"):
                    lo, hi = parts[0].split("-")
                    spans.append((int(lo, 16), int(hi, 16)))
    except OSError:
        pass
    return spans


def page_out(tensors: Sequence[torch.Tensor], spans: list[tuple[int, int]]) -> None:
    """Drop the pages of these host tensors that lie in a mapped file from the process's memory.

    Only file-backed ranges are touched: there MADV_DONTNEED just forgets clean pages, which the
    file still holds; anonymous memory is left alone, since there it would zero live data.
    """
    import ctypes
    import mmap

    if not spans:
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    page = mmap.PAGESIZE
    for t in tensors:
        if t.device.type != "cpu":
            continue
        lo, hi = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
        for a, b in spans:
            start, end = -(-max(lo, a) // page) * page, min(hi, b) // page * page
            if end > start:
                libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), mmap.MADV_DONTNEED)


def release_host_memory() -> None:
    """Hand freed heap pages back to the OS.

    The GGUF loader's tensors are mostly under glibc's mmap threshold (which grows up to 32 MB),
    so once they move to VRAM or into pinned buffers their pages stay in the heap and count
    against the RAM budget until trimmed.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
