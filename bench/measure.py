"""What the benchmark reads off the process: RSS, disk reads, the page cache, timed calls."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch

GIB = 1024**3


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


class MemorySampler(threading.Thread):
    """Peak RSS (total and anonymous) of this process, polled every 20 ms, with the phase at the peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = self.peak_anon = self.steady = 0
        self.marked = False
        self.stop = False
        self.phase = "start"  # set by the run, so a peak can be traced to what caused it
        self.at_peak: dict = {}
        self.anon_at: dict = {}

    def run(self) -> None:
        while not self.stop:
            rss, anon = status_bytes("VmRSS"), status_bytes("RssAnon")
            if rss > self.peak:
                self.at_peak = {"phase": self.phase, **{k: round(status_bytes(k) / GIB, 2)
                                                        for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}}
            if anon > self.peak_anon:
                self.anon_at = {"phase": self.phase, "RssAnon": round(anon / GIB, 2)}
            self.peak, self.peak_anon = max(self.peak, rss), max(self.peak_anon, anon)
            if self.marked:
                self.steady = max(self.steady, rss)
            time.sleep(0.02)


def disk_read_bytes() -> int:
    """Bytes this process made the kernel read from storage (page-cache hits excluded)."""
    try:
        with open("/proc/self/io") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("read_bytes:"))
    except (OSError, StopIteration):
        return -1


def drop_page_cache(root: Path) -> str:
    """Make the next read of the files under `root` come from the disk; returns the method that worked."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "drop_caches"
    except OSError:
        for path in Path(root).rglob("*"):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
        return "fadvise_dontneed"


def smaps_rollup() -> dict:
    """This process's resident memory split into anonymous and file-backed pages, in GiB."""
    out = {}
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB" and parts[0].rstrip(":") in ("Rss", "Anonymous", "Locked"):
                    out[parts[0].rstrip(":")] = int(parts[1]) / 1024**2
    except OSError:
        pass
    return out


def time_forwards(module: torch.nn.Module, log: list) -> list:
    """Hooks that append each forward's wall time (between device syncs) to `log`; returns the handles."""
    start = [0.0]

    def pre(_m, _a, _kw):
        sync()
        start[0] = time.perf_counter()

    def post(_m, _a, _kw, _out):
        sync()
        log.append(time.perf_counter() - start[0])

    return [module.register_forward_pre_hook(pre, with_kwargs=True),
            module.register_forward_hook(post, with_kwargs=True)]


def timed_method(obj, name: str, log: list) -> None:
    """Replace `obj.name` by a wrapper that appends each call's synced wall time to `log`."""
    inner = getattr(obj, name)

    def wrapper(*args, **kwargs):
        sync()
        t = time.perf_counter()
        out = inner(*args, **kwargs)
        sync()
        log.append(time.perf_counter() - t)
        return out

    obj.__dict__[name] = wrapper  # an instance attribute wins over the class's method


def forward_flops(cfg: dict, tokens: int, text_tokens: int) -> float:
    """The counted FLOPs of one transformer forward (1.68 PFLOP at 32,760 tokens)."""
    d, ffn, L = cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["ffn_dim"], tokens
    per_block = 8 * L * d * d + 4 * L * d * d + 4 * text_tokens * d * d + 4 * L * d * ffn + 4 * L * L * d
    return per_block * cfg["num_layers"]


ATTENTION_KERNEL_KEYS = ("flash", "fmha", "cudnn", "attention", "efficient")


def one_block_kernels(model, kw, keys) -> list[str]:
    """Sorted names of the GPU kernels one transformer block's forward launches whose names hold one of
    `keys` (case-insensitive), from the profiler; the other blocks are set aside for the run."""
    from torch.profiler import ProfilerActivity, profile

    keep = model.blocks[1:]
    model.blocks = model.blocks[:1]
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(**kw)
            sync()
    finally:
        model.blocks.extend(keep)
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if any(k in n.lower() for k in keys))
