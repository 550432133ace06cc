"""Seconds per SVI 2.0 Pro segment on the engine's real code path, in the t4, big and reload modes.

`python bench/segment.py --dry-run` runs every mode at tiny sizes on the CPU; `--files DIR` runs
full-size Wan 2.2 I2V A14B random-weight experts (see bench/README.md). Each mode runs in its own
process so that peak VRAM and RSS belong to that mode alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import GenerationSettings  # noqa: E402
from engine.memory.planner import GIB, ExpertSizes, MemoryNeeds, estimate_activation_bytes, format_plan, plan_placement  # noqa: E402

PROMPTS = [
    "a cat walks slowly toward the camera",
    "the cat turns and looks up at the sky",
    "the cat runs away down the street",
]
SUBFOLDERS = {"transformer": "high.gguf", "transformer_2": "low.gguf"}
T4_VRAM_GIB, T4_RAM_GIB = 15.0, 11.0
T4_TFLOPS, T4_DISK_BPS, T4_PCIE_BPS = 25e12, 150e6, 12e9

A14B = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, text_dim=4096, num_layers=40)
UMT5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=256384,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
SIZES = {
    "full": SimpleNamespace(transformer=A14B, umt5=UMT5_XXL, seq_len=512, vae_config="wan22",
                            settings=dict(num_frames=81, height=480, width=832)),
    # Full widths and the real segment size, few layers: checks the whole path on the GPU in minutes.
    "smoke": SimpleNamespace(transformer=dict(A14B, num_layers=4), umt5=dict(UMT5_XXL, num_layers=2), seq_len=512,
                             vae_config="wan22", settings=dict(num_frames=81, height=480, width=832)),
    # K-quants need rows of 256, hence a 256-wide transformer; the tiny engine preset's VAE.
    "dry": SimpleNamespace(transformer=dict(num_attention_heads=2, attention_head_dim=128, ffn_dim=512,
                                            text_dim=256, num_layers=3),
                           umt5=dict(d_model=256, d_ff=512, d_kv=64, num_heads=4, num_layers=2, vocab_size=128,
                                     feed_forward_proj="gated-gelu", relative_attention_num_buckets=32),
                           seq_len=32, vae_config="tiny", settings=dict(num_frames=13, height=64, width=112)),
}


# ---- files ------------------------------------------------------------------------------------
def transformer_config(size: str) -> dict:
    from engine.models.presets import wan22_config_dir

    cfg = json.loads((wan22_config_dir() / "transformer" / "config.json").read_text())
    cfg.update(SIZES[size].transformer)
    return cfg


def write_files(out: Path, size: str) -> None:
    """Two random experts as GGUF plus the config dir the single-file loader reads."""
    from bench.gguf_random import write_random_expert

    cfg = transformer_config(size)
    for sub, seed in (("transformer", 1), ("transformer_2", 2)):
        (out / "configs" / sub).mkdir(parents=True, exist_ok=True)
        (out / "configs" / sub / "config.json").write_text(json.dumps(cfg))
        t = time.perf_counter()
        n = write_random_expert(out / SUBFOLDERS[sub], cfg, seed)
        print(f"wrote {out / SUBFOLDERS[sub]}: {n / 1e9:.2f} GB in {time.perf_counter() - t:.1f} s", flush=True)


def expert_sizes_from_gguf(name: str, path: Path) -> ExpertSizes:
    """Per-block bytes read from the file's tensor table, before anything is loaded."""
    from gguf import GGUFReader

    blocks: dict[int, int] = {}
    other = 0
    for t in GGUFReader(str(path)).tensors:
        if t.name.startswith("blocks."):
            i = int(t.name.split(".")[1])
            blocks[i] = blocks.get(i, 0) + int(t.n_bytes)
        else:
            other += int(t.n_bytes)
    return ExpertSizes(name, tuple(blocks[i] for i in sorted(blocks)), other)


def drop_page_cache(path: Path) -> str:
    """Make the next read of `path` come from the disk; returns the method that worked."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "drop_caches"
    except OSError:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return "fadvise_dontneed"


# ---- measuring --------------------------------------------------------------------------------
class MemorySampler(threading.Thread):
    """Peak RSS (and anonymous RSS) of this process, polled every 20 ms; `mark()` starts a second peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = self.peak_anon = self.steady = 0
        self.marked = False
        self.stop = False
        self.phase = "start"  # set by the run, so the peak can be traced to what caused it
        self.at_peak: dict = {}

    def run(self) -> None:
        while not self.stop:
            rss, anon = _status_bytes("VmRSS"), _status_bytes("RssAnon")
            if rss > self.peak:
                self.at_peak = {"phase": self.phase, **{k: round(_status_bytes(k) / GIB, 2)
                                                        for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}}
            self.peak, self.peak_anon = max(self.peak, rss), max(self.peak_anon, anon)
            if self.marked:
                self.steady = max(self.steady, rss)
            time.sleep(0.02)


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def smaps_rollup() -> dict:
    """This process's resident memory split into anonymous and file-backed pages, in GiB."""
    out = {}
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB" and parts[0].rstrip(":") in ("Rss", "Anonymous", "Locked", "Shared_Clean", "Private_Clean"):
                    out[parts[0].rstrip(":")] = int(parts[1]) / 1024**2
    except OSError:
        pass
    return out


def disk_read_bytes() -> int:
    """Bytes this process made the kernel read from storage (page-cache hits excluded)."""
    try:
        with open("/proc/self/io") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("read_bytes:"))
    except (OSError, StopIteration):
        return -1


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Expert:
    """Stands in for an expert in `Models`: times each forward and, in reload mode, loads on demand."""

    def __init__(self, log: list, module=None, load=None, siblings=None) -> None:
        self.module, self.load, self.siblings = module, load, siblings
        self.forward_s = log  # shared by both experts, in call order
        self.load_s = 0.0
        self.loaded_bytes = 0

    def __call__(self, **kwargs):
        if self.module is None:  # the usual notebook: free the other expert, read this one from disk
            for other in self.siblings:
                if other is not self:
                    other.module = None
            from engine.models.loading import free_memory

            free_memory()
            t = time.perf_counter()
            self.module, nbytes = self.load()
            sync()
            self.load_s += time.perf_counter() - t
            self.loaded_bytes += nbytes
        sync()
        t = time.perf_counter()
        out = self.module(**kwargs)
        sync()
        self.forward_s.append(time.perf_counter() - t)
        return out


class TimedVae:
    """The VAE with its decode timed; everything else passes through."""

    def __init__(self, vae) -> None:
        self._vae, self.decode_s = vae, []

    def __getattr__(self, name):
        return getattr(self._vae, name)

    def decode(self, *args, **kwargs):
        sync()
        t = time.perf_counter()
        out = self._vae.decode(*args, **kwargs)
        sync()
        self.decode_s.append(time.perf_counter() - t)
        return out


class ReplayEncoder:
    """Returns the hidden states the real text encoder gave for these ids (it has been freed)."""

    def __init__(self, ids: torch.Tensor, hidden: torch.Tensor) -> None:
        self.ids, self.hidden = ids, hidden

    def __call__(self, ids, mask):
        if not torch.equal(ids.cpu(), self.ids):
            raise ValueError("the story asked for prompts the benchmark did not encode")
        return SimpleNamespace(last_hidden_state=self.hidden)


def forward_flops(cfg: dict, tokens: int, text_tokens: int) -> float:
    """The counted FLOPs of one transformer forward (1.68 PFLOP at 32,760 tokens)."""
    d, ffn, L = cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["ffn_dim"], tokens
    per_block = 8 * L * d * d + 4 * L * d * d + 4 * text_tokens * d * d + 4 * L * d * ffn + 4 * L * L * d
    return per_block * cfg["num_layers"]


# ---- building the random components ------------------------------------------------------------
def build_text_encoder(size: str, device, dtype):
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(pad_token_id=0, eos_token_id=1, dropout_rate=0.0, **SIZES[size].umt5)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build straight in the compute dtype: 11 GB, not 23 in fp32
    try:
        with torch.device(device):
            te = UMT5EncoderModel(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    return te


def build_vae(size: str, device, dtype):
    from diffusers import AutoencoderKLWan

    if SIZES[size].vae_config == "tiny":
        from engine.models.tiny import TINY_VAE

        vae = AutoencoderKLWan(**TINY_VAE)
    else:
        from engine.models.presets import wan22_config_dir

        vae = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(str(wan22_config_dir() / "vae")))
    return vae.to(device, dtype).eval()


def build_tokenizer(size: str):
    from engine.models.tiny import build_tokenizer as tiny_tokenizer

    tok = tiny_tokenizer()
    tok.model_max_length = SIZES[size].seq_len
    return tok


# ---- one mode ---------------------------------------------------------------------------------
def run_mode(mode: str, files: Path, size: str, out: Path) -> dict:
    from engine.models.loading import Models, free_memory, load_expert_gguf
    from engine.memory.streaming import place_model
    from engine.svi import encode_prompts, generate_story
    from engine.video import write_mp4

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = {"big": torch.bfloat16}.get(mode, torch.float16) if cuda else torch.float32
    sampler = MemorySampler()
    sampler.start()
    result: dict = {"mode": mode, "dtype": str(dtype).replace("torch.", ""),
                    "gpu": torch.cuda.get_device_name() if cuda else "cpu"}
    if cuda and mode in ("t4", "reload"):
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(T4_VRAM_GIB * GIB / total, torch.cuda.current_device())
        result["vram_limit_gib"] = T4_VRAM_GIB
    settings = GenerationSettings(seed=0, num_inference_steps=4, **SIZES[size].settings)  # guidance 1
    cfg = transformer_config(size)
    breakdown: dict = {}

    # 1. Text: every prompt in one pass, then the encoder is freed before the experts arrive
    sampler.phase = "text encoder"
    t = time.perf_counter()
    te = build_text_encoder(size, device, dtype)
    sync()
    result["text_encoder_build_s"] = time.perf_counter() - t
    models = Models(transformer=None, transformer_2=None, vae=None, text_encoder=None,
                    tokenizer=build_tokenizer(size), device=device, dtype=dtype, preset="bench",
                    label="bench (random weights)", max_sequence_length=SIZES[size].seq_len, is_random_weights=True)
    captured = {}

    def record(ids, mask):
        captured["ids"], out = ids.cpu(), te(ids, mask)
        captured["hidden"] = out.last_hidden_state
        return out

    models.text_encoder = record
    t = time.perf_counter()
    encode_prompts(models, PROMPTS)
    sync()
    breakdown["text"] = time.perf_counter() - t
    models.text_encoder = ReplayEncoder(captured["ids"], captured["hidden"])
    te = record = None  # the encoder goes before the experts arrive
    free_memory()

    # 2. Placement
    sampler.phase = "placement"
    t = time.perf_counter()
    paths = {name: files / fname for name, fname in SUBFOLDERS.items()}
    vae = build_vae(size, device, dtype)
    streamers = {}
    forward_log: list[float] = []
    reload_method = None
    if mode == "reload":
        experts: list[Expert] = []

        def loader(name):
            def load():
                nonlocal reload_method
                reload_method = drop_page_cache(paths[name])
                m = load_expert_gguf(paths[name], files / "configs", name, dtype).to(device)
                return m, paths[name].stat().st_size
            return load

        for name in SUBFOLDERS:
            experts.append(Expert(forward_log, load=loader(name), siblings=experts))
        result["page_cache"] = "dropped before every load"
    else:
        sizes = tuple(expert_sizes_from_gguf(n, p) for n, p in paths.items())
        tokens = settings.num_latent_frames * (settings.height // 16) * (settings.width // 16)
        itemsize = torch.tensor([], dtype=dtype).element_size()
        needs = MemoryNeeds(
            experts=sizes, vae_bytes=sum(p.numel() * p.element_size() for p in vae.parameters()),
            text_encoder_bytes=0,  # already encoded and freed
            activation_bytes=estimate_activation_bytes(tokens, cfg["num_attention_heads"] * cfg["attention_head_dim"],
                                                       cfg["ffn_dim"], settings.height, settings.width, itemsize),
        )
        if mode == "t4":
            vram_budget, ram_budget = int(T4_VRAM_GIB * GIB), int(T4_RAM_GIB * GIB)
        elif cuda:
            vram_budget, ram_budget = torch.cuda.mem_get_info(device)[0], 10**15
        else:  # dry run of the big mode: everything resident
            vram_budget = ram_budget = 10**15
        if mode == "t4" and size != "full":  # a VRAM budget that forces most blocks to stream
            vram_budget = needs.activation_bytes + needs.vae_bytes + sum(s.other_bytes for s in sizes) + 4 * max(sizes[0].block_bytes)
        plan = plan_placement(needs, vram_budget, ram_budget)
        print(format_plan(plan), flush=True)
        result["plan"] = format_plan(plan).splitlines()
        experts = []
        phases = result["rss_phases_gib"] = []
        snap = lambda label: phases.append(
            (label, *(round(_status_bytes(k) / GIB, 2) for k in ("VmRSS", "RssAnon", "RssFile"))))
        snap("before experts")
        for name in SUBFOLDERS:
            sampler.phase = f"loading {name}"
            m = load_expert_gguf(paths[name], files / "configs", name, dtype)
            snap(f"{name} loaded")
            sampler.phase = f"placing {name}"
            streamers[name] = place_model(m, plan.locations(name), device, measure_waits=True)
            free_memory()
            snap(f"{name} placed")
            experts.append(Expert(forward_log, module=m))
        result["pcie_bytes_per_forward"] = {n: plan.streamed_bytes_per_forward(n) for n in SUBFOLDERS}
    sync()
    breakdown["placement"] = time.perf_counter() - t
    models.transformer, models.transformer_2 = experts
    models.vae = timed_vae = TimedVae(vae)

    # 3. The story: 3 segments through the engine's own loop; mp4s are written on a worker thread
    marks = []
    pool = ThreadPoolExecutor(1)
    encodes: list = []

    def timed_write(frames, path):
        t0 = time.perf_counter()
        write_mp4(frames, path, fps=settings.fps)
        return time.perf_counter() - t0

    def on_segment(seg):
        sync()
        for st in streamers.values():
            st.stats.collect_waits()
        marks.append(dict(t=time.perf_counter(), io=disk_read_bytes(),
                          forwards=len(forward_log),
                          waits=sum(st.stats.wait_s for st in streamers.values()),
                          decodes=len(timed_vae.decode_s), frees=len(free_s),
                          stream=[(s.stats.ram_bytes, s.stats.disk_bytes) for s in streamers.values()],
                          loaded=sum(e.loaded_bytes for e in experts),
                          load_s=sum(e.load_s for e in experts)))
        encodes.append(pool.submit(timed_write, seg.frames, files / f"{mode}_segment{seg.index}.mp4"))
        sampler.phase = f"after segment {seg.index}"
        if seg.index == 0:
            sampler.marked = True  # from here on the process is in its steady state

    import engine.svi as svi

    free_s: list[float] = []
    engine_free = svi.free_memory

    def timed_free():  # the story loop frees memory after every segment; its cost is part of "other"
        t0 = time.perf_counter()
        engine_free()
        free_s.append(time.perf_counter() - t0)

    svi.free_memory = timed_free
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    sampler.phase = "segment 0"
    start = dict(t=time.perf_counter(), io=disk_read_bytes())
    photo = ROOT / "examples" / "chelsea.jpg"
    generate_story(models, photo, PROMPTS, settings, on_segment=on_segment)
    encode_s = [f.result() for f in encodes]
    pool.shutdown()
    svi.free_memory = engine_free
    result["smaps_rollup_steady"] = smaps_rollup()
    if cuda:
        stats = torch.cuda.memory_stats(device)
        result["allocator"] = {k: stats.get(k, 0) for k in ("num_alloc_retries", "num_ooms", "num_device_alloc", "num_device_free")}

    # 4. Steady state = segments 2 and 3 (index 1, 2): everything between their completions
    seg_times = [marks[0]["t"] - start["t"]] + [b["t"] - a["t"] for a, b in zip(marks, marks[1:])]
    a, b = marks[0], marks[-1]
    n = len(marks) - 1
    steps = settings.num_inference_steps
    steady_fwd = sum(forward_log[a["forwards"]:b["forwards"]])
    stream_ram = sum(s.stats.ram_bytes for s in streamers.values())
    stream_disk = sum(s.stats.disk_bytes for s in streamers.values())
    stream_ram_steady = stream_ram - sum(r for r, _ in a["stream"])
    stream_disk_steady = stream_disk - sum(d for _, d in a["stream"])
    tokens = settings.num_latent_frames * (settings.height // 16) * (settings.width // 16)
    flops = forward_flops(cfg, tokens, SIZES[size].seq_len) * steps
    result.update(
        segment_s=sum(seg_times[1:]) / n,
        segment_times_s=seg_times,
        peak_vram_gib=torch.cuda.max_memory_reserved(device) / GIB if cuda else 0.0,
        peak_vram_allocated_gib=torch.cuda.max_memory_allocated(device) / GIB if cuda else 0.0,
        peak_rss_gib=sampler.peak / GIB,
        peak_rss_anon_gib=sampler.peak_anon / GIB,
        rss_at_peak=sampler.at_peak,
        peak_rss_steady_gib=sampler.steady / GIB,
        disk_bytes_per_segment=(stream_disk_steady + b["loaded"] - a["loaded"]) / n,
        disk_read_bytes_per_segment_proc=(b["io"] - a["io"]) / n if a["io"] >= 0 else None,
        pcie_bytes_per_segment=(stream_ram_steady + stream_disk_steady) / n,
        flops_per_segment=flops,
        breakdown=dict(
            text=breakdown["text"],  # once per story
            placement=breakdown["placement"],  # once per process
            denoise_forwards=steady_fwd / n,
            expert_reloads=(b["load_s"] - a["load_s"]) / n,
            streaming_waits=(b["waits"] - a["waits"]) / n,
            vae_decode=sum(timed_vae.decode_s[a["decodes"]:b["decodes"]]) / n,
            mp4_encode=sum(encode_s[1:]) / n,  # on a worker thread, overlapping the next segment
            free_memory=sum(free_s[a["frees"]:b["frees"]]) / n,
        ),
    )
    result["breakdown"]["other"] = result["segment_s"] - sum(
        result["breakdown"][k] for k in ("denoise_forwards", "expert_reloads", "vae_decode"))
    if reload_method:
        result["page_cache"] = reload_method
    result["t4_projection_s"] = (flops / T4_TFLOPS + result["disk_bytes_per_segment"] / T4_DISK_BPS
                                 + result["pcie_bytes_per_segment"] / T4_PCIE_BPS)
    if mode == "big":
        result["exactness"] = check_exactness(experts[1].module, streamers["transformer_2"], device, dtype, cfg)
    sampler.stop = True
    out.write_text(json.dumps(result, indent=1))
    return result


@torch.inference_mode()
def check_exactness(model, streamer, device, dtype, cfg) -> dict:
    """One forward with every other block streamed from pinned RAM against the all-resident forward."""
    from engine.memory.streaming import place_model

    g = torch.Generator(device).manual_seed(3)
    x = torch.randn(1, 36, 21, 30, 52, device=device, dtype=dtype, generator=g)  # (B, C, T, h, w): 8,190 tokens
    text = torch.randn(1, 512, cfg["text_dim"], device=device, dtype=dtype, generator=g)
    kw = dict(hidden_states=x, timestep=torch.tensor([500.0], device=device), encoder_hidden_states=text,
              return_dict=False)
    ref = model(**kw)[0].float()
    streamer.remove()
    place_model(model, ["ram" if i % 2 else "vram" for i in range(len(model.blocks))], device)
    out = model(**kw)[0].float()
    rel = ((out - ref).norm() / ref.norm()).item()
    return {"bitwise_equal": bool(torch.equal(out, ref)), "relative_error": rel, "finite": bool(out.isfinite().all())}


# ---- the floor --------------------------------------------------------------------------------
def run_floor(size: str, out: Path) -> dict:
    """4 dense bf16 forwards + one VAE decode at the segment size, and which SDPA kernel runs."""
    from diffusers import WanTransformer3DModel

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    s = GenerationSettings(**SIZES[size].settings)
    T, h, w = s.num_latent_frames, s.height // 8, s.width // 8
    cfg = {k: v for k, v in transformer_config(size).items() if not k.startswith("_")}
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = WanTransformer3DModel(**cfg).eval()
    torch.set_default_dtype(old)
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(1, 36, T, h, w, device=device, dtype=dtype, generator=g)  # (B, C, T, h, w)
    text = torch.randn(1, SIZES[size].seq_len, cfg["text_dim"], device=device, dtype=dtype, generator=g)
    result = {"gpu": torch.cuda.get_device_name() if cuda else "cpu"}
    with torch.inference_mode():
        kw = dict(hidden_states=x, timestep=torch.tensor([900.0], device=device), encoder_hidden_states=text,
                  return_dict=False)
        model(**kw)  # warm-up
        sync()
        t = time.perf_counter()
        for _ in range(4):
            model(**kw)
        sync()
        result["forward_s"] = (time.perf_counter() - t) / 4
        result["sdpa_kernels"] = sdpa_kernels(model, kw) if cuda else []
        del model
        vae = build_vae(size, device, dtype)
        z = torch.randn(1, 16, T, h, w, device=device, dtype=dtype, generator=g)
        vae.decode(z)
        sync()
        t = time.perf_counter()
        vae.decode(z)
        sync()
        result["vae_decode_s"] = time.perf_counter() - t
    result["floor_s"] = 4 * result["forward_s"] + result["vae_decode_s"]
    out.write_text(json.dumps(result, indent=1))
    return result


def sdpa_kernels(model, kw) -> list[str]:
    """Names of the attention kernels one block's forward launches (flash, cuDNN or efficient)."""
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
    return sorted(n for n in names if any(k in n.lower() for k in ("flash", "fmha", "cudnn", "attention", "efficient")))


# ---- orchestration ----------------------------------------------------------------------------
def table(results: dict) -> str:
    floor = results["floor_s"]
    rows = ["| mode | s/segment | x floor | peak VRAM GiB | peak RSS GiB (steady) | disk B/segment | forwards | waits | VAE | mp4 | T4 projection |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in ("t4", "big", "reload"):
        r = results["modes"].get(mode)
        if not r:
            continue
        b = r["breakdown"]
        rows.append(
            f"| {mode} | {r['segment_s']:.2f} | {r['segment_s'] / floor:.2f} | {r['peak_vram_gib']:.2f} | "
            f"{r['peak_rss_gib']:.2f} ({r['peak_rss_steady_gib']:.2f}) | {r['disk_bytes_per_segment']:.3g} | "
            f"{b['denoise_forwards']:.2f} | {b['streaming_waits']:.3f} | {b['vae_decode']:.2f} | {b['mp4_encode']:.2f} | "
            f"{r['t4_projection_s'] / 60:.1f} min |")
    rows.append(f"floor: {floor:.2f} s (4 dense bf16 forwards of {results['floor']['forward_s']:.2f} s + VAE decode "
                f"{results['floor']['vae_decode_s']:.2f} s) on {results['floor']['gpu']}")
    rows.append("T4 projection (not a measurement): counted FLOPs at 25 TFLOP/s + disk bytes at 150 MB/s + PCIe bytes at 12 GB/s")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, every mode")
    ap.add_argument("--files", type=Path, help="folder for the random GGUF experts")
    ap.add_argument("--write", action="store_true", help="write the experts into --files first")
    ap.add_argument("--modes", default="floor,t4,big,reload")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--size", choices=["full", "smoke"], default="full", help="smoke: 4 layers, for a quick GPU check")
    ap.add_argument("--report-only", action="store_true", help="only rebuild latest.json and the table from --out")
    ap.add_argument("--mode", help=argparse.SUPPRESS)  # child process: one mode
    args = ap.parse_args()
    size = "dry" if args.dry_run else args.size
    files = args.files or Path("/tmp/svibot-bench-dry" if args.dry_run else "/tmp/svibot-bench")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mode:
        # Fewer fragments under the 15 GiB cap; it must be set before CUDA starts.
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        if args.mode == "floor":
            run_floor(size, args.out / "floor.json")
        else:
            run_mode(args.mode, files, size, args.out / f"{args.mode}.json")
        return
    if args.report_only:
        args.modes = ""
    elif args.write or args.dry_run or not (files / "high.gguf").exists():
        files.mkdir(parents=True, exist_ok=True)
        write_files(files, size)
    for mode in filter(None, args.modes.split(",")):
        t = time.perf_counter()
        cmd = [sys.executable, __file__, "--mode", mode, "--files", str(files), "--out", str(args.out)]
        cmd += ["--dry-run"] if args.dry_run else ["--size", size]
        code = subprocess.call(cmd)
        print(f"mode {mode}: exit {code} after {time.perf_counter() - t:.0f} s", flush=True)
    results = {"size": size, "modes": {}}
    if (args.out / "floor.json").exists():
        results["floor"] = json.loads((args.out / "floor.json").read_text())
        results["floor_s"] = results["floor"]["floor_s"]
    for mode in ("t4", "big", "reload"):
        p = args.out / f"{mode}.json"
        if p.exists():
            results["modes"][mode] = r = json.loads(p.read_text())
            if "floor_s" in results:
                r["ratio_to_floor"] = r["segment_s"] / results["floor_s"]
    (args.out / "latest.json").write_text(json.dumps(results, indent=1))
    if "floor_s" in results:
        text = table(results)
        (args.out / "latest.md").write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    main()
