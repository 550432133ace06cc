"""UMT5 read from its safetensors only when prompts miss the cache, run once per job, then freed.

Before the experts are placed it gets the whole GPU; afterwards its layers stream from disk through free VRAM.
"""
from __future__ import annotations

import gc
import logging
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

log = logging.getLogger(__name__)

MIB = 1024**2


@dataclass(frozen=True)
class EncodeStats:
    mode: str  # "whole" (all layers on the device, experts not placed yet) or "offload" (layers from disk)
    seconds: float  # load + forward + free
    disk_bytes: int  # encoder weights read from its files for this job (once per job, never per segment)
    streamed_bytes: int  # of those, read from disk during the forward because they did not fit in memory


STAGING_BYTES = 64 * MIB


def _set_param(model: torch.nn.Module, name: str, param: torch.nn.Parameter) -> None:
    owner, _, attr = name.rpartition(".")
    model.get_submodule(owner)._parameters[attr] = param


def load_whole(path: Path, device: torch.device, dtype: torch.dtype):
    """UMT5EncoderModel from its safetensors shards straight onto `device`, as `from_pretrained(dtype=...)`
    builds it (modules in `_keep_in_fp32_modules` stay fp32 under fp16, tied weights tied).

    The shards are read with plain reads through one small staging buffer: a mapped 11 GB file's
    pages would count as the process's memory on a 12.7 GB host while the model loads.
    """
    import json
    import os
    import struct

    from transformers import AutoConfig, UMT5EncoderModel

    config = AutoConfig.from_pretrained(path)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else old)
    try:
        with torch.device("meta"):
            model = UMT5EncoderModel(config)
    finally:
        torch.set_default_dtype(old)
    keep = set(model._keep_in_fp32_modules or ()) if dtype == torch.float16 else set()
    if dtype in (torch.float16, torch.bfloat16):
        keep |= set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    for name, module in model.named_modules():
        if keep.intersection(name.split(".")):
            module.float()
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    model.to_empty(device=device)
    for names in groups.values():  # to_empty gives each module its own tensor: tie them again
        first = model.get_parameter(names[0])
        for other in names[1:]:
            _set_param(model, other, first)
    params = {n: model.get_parameter(names[0]) for names in groups.values() for n in names}
    staging = torch.empty(STAGING_BYTES, dtype=torch.uint8, pin_memory=device.type == "cuda")
    kinds = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    loaded = set()
    for shard in sorted(Path(path).glob("*.safetensors")):
        fd = os.open(shard, os.O_RDONLY)
        try:
            (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
            header = json.loads(os.pread(fd, n, 8))
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                if key not in params:
                    raise ValueError(f"{shard} holds {key}, which {type(model).__name__} does not have")
                dst = params[key].data.view(-1)
                src_dtype = kinds[info["dtype"]]
                start, end = info["data_offsets"]
                step = STAGING_BYTES // src_dtype.itemsize
                for i in range(0, dst.numel(), step):  # chunk by chunk; copy_ casts to the parameter's dtype
                    count = min(step, dst.numel() - i)
                    view = staging[: count * src_dtype.itemsize]
                    got = os.preadv(fd, [memoryview(view.numpy())], 8 + n + start + i * src_dtype.itemsize)
                    if got != view.numel():
                        raise ValueError(f"{shard} ends inside tensor {key}")
                    dst[i : i + count].copy_(view.view(src_dtype))
                loaded.update(n_ for n_, p in params.items() if p is params[key])
        finally:
            os.close(fd)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ValueError(f"text encoder files in {path} lack {len(missing)} weights, e.g. {missing[:3]}")
    return model.eval()


class LazyTextEncoder:
    """Called like `UMT5EncoderModel(input_ids, attention_mask)`; holds no weights between calls.

    Until `experts_placed` is set, a call loads the whole encoder onto `device` straight from the
    mapped safetensors. After, accelerate places what fits in `max_vram` (default: free VRAM less
    `vram_margin` and the largest weight) and `host_bytes` of RAM and reads the rest from disk as it runs.
    """

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype, offload_dir: Path,
                 vram_margin: int = 1024 * MIB, host_bytes: int = 256 * MIB, max_vram: int | None = None) -> None:
        self.path, self.device, self.dtype, self.offload_dir = Path(path), torch.device(device), dtype, Path(offload_dir)
        self.vram_margin, self.host_bytes, self.max_vram = vram_margin, host_bytes, max_vram
        self.experts_placed = False
        self.loads = 0  # how many times the weights were read, for tests and logs
        self.last: EncodeStats | None = None
        self.last_module: weakref.ref | None = None  # dead once the encoder is freed

    def _tensor_bytes(self) -> list[int]:
        """Size of each weight in the compute dtype, from the safetensors headers (nothing is read)."""
        from safetensors import safe_open

        sizes = []
        for f in sorted(self.path.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    n = self.dtype.itemsize
                    for d in st.get_slice(key).get_shape():
                        n *= d
                    sizes.append(n)
        if not sizes:
            raise FileNotFoundError(f"no *.safetensors weights in text encoder folder {self.path}")
        return sizes

    @property
    def nbytes(self) -> int:
        return sum(self._tensor_bytes())

    def _max_memory(self) -> dict:
        if self.device.type != "cuda":
            return {"cpu": self.host_bytes}
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        vram = self.max_vram
        if vram is None:
            torch.cuda.empty_cache()
            free, _total = torch.cuda.mem_get_info(index)
            # transformers reserves the GPU share in one block before loading; its leftover can be
            # too fragmented for the largest weight (the 2 GB embedding), which then needs fresh VRAM
            # (an H100 run with 4 GiB free and only the margin ran out of memory exactly so)
            vram = max(free - self.vram_margin - max(self._tensor_bytes()), 0)
        return {index: vram, "cpu": self.host_bytes}

    def _load(self):
        from transformers import UMT5EncoderModel

        self.loads += 1
        if not self.experts_placed:
            return load_whole(self.path, self.device, self.dtype), "whole", 0
        self.offload_dir.mkdir(parents=True, exist_ok=True)
        model = UMT5EncoderModel.from_pretrained(
            self.path, dtype=self.dtype, device_map="auto", max_memory=self._max_memory(),
            offload_folder=str(self.offload_dir),
        ).eval()
        # accelerate leaves offloaded weights on the meta device and loads them at each module's forward
        streamed = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type == "meta")
        return model, "offload", streamed

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        started = time.perf_counter()
        model, mode, streamed = self._load()
        self.last_module = weakref.ref(model)
        try:
            with torch.inference_mode():
                # accelerate runs offloaded layers on the first accelerator in the map, or on the CPU
                gpus = [d for d in getattr(model, "hf_device_map", {}).values() if d not in ("cpu", "disk")]
                run_on = self.device if mode == "whole" or gpus else torch.device("cpu")
                mask = attention_mask.to(run_on) if attention_mask is not None else None
                hidden = model(input_ids=input_ids.to(run_on), attention_mask=mask).last_hidden_state
                hidden = hidden.to(self.device)
        finally:
            del model
            gc.collect()  # accelerate's hooks hold reference cycles to the modules
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.last = EncodeStats(mode=mode, seconds=time.perf_counter() - started, disk_bytes=self.nbytes,
                                streamed_bytes=streamed)
        log.info("text encoder ran %s (%s) for %d prompts in %.1f s; read %.2f GiB from disk for this job, "
                 "%.2f GiB of it streamed during the forward", mode,
                 "whole model on the device before the experts were placed" if mode == "whole"
                 else "layers beyond free VRAM read from disk as they run", input_ids.shape[0],
                 self.last.seconds, self.last.disk_bytes / 1024**3, streamed / 1024**3)
        return SimpleNamespace(last_hidden_state=hidden)
