"""One benchmark mode in this process: cold start through `load_models`, then a 3-segment story.

t4: VRAM capped at 15 GiB, the planner given 15 GiB VRAM + 11 GiB RAM, fp16.
big: no budget, bf16; afterwards the LoRA output check at full size.
reload: the usual notebook under the same cap in fp16: each expert (with its LoRAs) read from disk when
needed, the other dropped, the page cache dropped before every load.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bench.measure import (
    GIB, MemorySampler, disk_read_bytes, drop_page_cache, forward_flops, smaps_rollup, status_bytes, sync,
    time_forwards, timed_method,
)

PROMPTS = ["a cat walks slowly toward the camera", "the cat turns and looks up at the sky",
           "the cat runs away down the street"]
T4_VRAM_GIB, T4_RAM_GIB = 15.0, 11.0
T4_TFLOPS, T4_DISK_BPS, T4_PCIE_BPS = 25e12, 150e6, 12e9
FAST = dict(svi_high=1.0, svi_low=1.0, lightx2v_high=0.5, lightx2v_low=1.0)  # the SVI workflow's strengths


class ReloadingExpert:
    """The usual notebook: the expert is read from disk (page cache dropped) when the loop calls it."""

    def __init__(self, name, load, siblings, forward_log) -> None:
        self.name, self.load, self.siblings, self.forward_log = name, load, siblings, forward_log
        self.module = None
        self.load_s, self.loaded_bytes = 0.0, 0

    def __call__(self, **kwargs):
        if self.module is None:
            for other in self.siblings:
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
        self.forward_log.append(time.perf_counter() - t)
        return out


def _reload_experts(models, settings, preset, models_dir: Path, dtype, forward_log):
    from engine.models.download import local_preset_files
    from engine.models.loading import load_expert_gguf
    from engine.models.lora import expert_strengths, load_lora, read_lora_file
    from engine.models.lora_linear import materialize_loras
    from engine.models.presets import wan22_config_dir

    paths = local_preset_files(preset.files, models_dir)
    configs = preset.config_dir or wan22_config_dir()
    weights = expert_strengths(settings.lora_strengths)
    experts = []

    def loader(name, part, loras):
        def load():
            drop_page_cache(models_dir)
            m = load_expert_gguf(paths[part], configs, name, dtype)
            for adapter, lora_part in loras.items():
                load_lora(m, read_lora_file(paths[lora_part]), adapter, strength=weights[name][adapter])
            m.to(models.device)
            materialize_loras(m, dtype)
            return m, paths[part].stat().st_size + sum(paths[p].stat().st_size for p in loras.values())
        return load

    for name, part, loras in (("transformer", "high", {"svi": "svi_high", "lightx2v": "lightx2v_high"}),
                              ("transformer_2", "low", {"svi": "svi_low", "lightx2v": "lightx2v_low"})):
        experts.append(ReloadingExpert(name, loader(name, part, loras), experts, forward_log))
    return experts


def run_mode(mode: str, models_dir: Path, preset, settings, transformer_cfg: dict, seq_len: int, out: Path,
             photo: Path, t4_budgets: tuple[float, float] = (T4_VRAM_GIB, T4_RAM_GIB), check_lora: bool = True) -> dict:
    from engine.memory.planner import format_plan
    from engine.models.config import EngineConfig
    from engine.models.loading import load_models
    from engine.svi import generate_story
    from engine.video import write_mp4

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    sampler = MemorySampler()
    sampler.start()
    dtype_name = {"big": "bfloat16"}.get(mode, "float16") if cuda else "float32"
    result: dict = {"mode": mode, "preset": preset.name, "dtype": dtype_name,
                    "gpu": torch.cuda.get_device_name() if cuda else "cpu"}
    if cuda and mode in ("t4", "reload"):
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(T4_VRAM_GIB * GIB / total, torch.cuda.current_device())
        result["vram_limit_gib"] = T4_VRAM_GIB
    t4 = mode == "t4"
    import os

    # The engine's own settings from the environment; the T4 has no FP8 tensor cores, so t4 holds GGUF.
    env = os.environ
    config = EngineConfig(preset=preset.name, models_dir=models_dir, device=str(device), dtype=dtype_name,
                          vram_budget_gib=t4_budgets[0] if t4 else None, ram_budget_gib=t4_budgets[1] if t4 else None,
                          attention=env.get("SVIBOT_ATTENTION", "auto"), compile=env.get("SVIBOT_COMPILE", "auto"),
                          weights=env.get("SVIBOT_WEIGHTS") or ("auto" if mode == "big" else "gguf"))
    # each job weights the LoRAs for its recipe; the story runs the fast one
    assert {k: getattr(settings, k) for k in FAST} == FAST, settings
    result["planner_budgets_gib"] = list(t4_budgets) if t4 else None

    # 1. Cold start: page cache dropped, then the real loader (mapped experts, LoRAs attached, lazy encoder)
    result["page_cache"] = drop_page_cache(models_dir)
    io_start = disk_read_bytes()
    sampler.phase = "load_models"
    t_cold = time.perf_counter()
    models = load_models(config)
    result["load_models_s"] = time.perf_counter() - t_cold
    forward_log: list[float] = []
    place_s: list[float] = []
    experts = []
    if mode == "reload":
        models.place_pending = lambda: setattr(sampler, "phase", "segment 0")  # nothing to place: loads per use
        models.vae.to(device)
        experts = _reload_experts(models, settings, preset, models_dir, models.dtype, forward_log)
        models.transformer, models.transformer_2 = experts
    else:
        for m in (models.transformer, models.transformer_2):
            time_forwards(m, forward_log)
        place = models.place_pending

        def timed_place():
            sampler.phase = "placement"
            t = time.perf_counter()
            place()
            sync()
            place_s.append(time.perf_counter() - t)
            for s in (models.streamers or {}).values():
                s.measure_waits = cuda
            sampler.phase = "segment 0"

        models.place_pending = timed_place
    decode_s: list[float] = []
    timed_method(models.vae, "decode", decode_s)

    # 2. The story, 3 segments through the engine's own loop; mp4s are written on a worker thread
    import engine.svi as svi

    free_s: list[float] = []
    engine_free = svi.free_memory

    def timed_free():  # the loop frees memory after every segment; its cost is part of "other"
        t0 = time.perf_counter()
        engine_free()
        free_s.append(time.perf_counter() - t0)

    svi.free_memory = timed_free
    marks, encodes = [], []
    pool = ThreadPoolExecutor(1)

    def timed_write(frames, path):
        t0 = time.perf_counter()
        write_mp4(frames, path, fps=settings.fps)
        return time.perf_counter() - t0

    def on_segment(seg):
        sync()
        streamers = list((models.streamers or {}).values())
        for st in streamers:
            st.stats.collect_waits()
        marks.append(dict(t=time.perf_counter(), io=disk_read_bytes(), forwards=len(forward_log),
                          waits=sum(st.stats.wait_s for st in streamers), decodes=len(decode_s), frees=len(free_s),
                          disk=sum(st.stats.disk_bytes for st in streamers),
                          pcie=sum(st.stats.ram_bytes + st.stats.disk_bytes for st in streamers),
                          loaded=sum(e.loaded_bytes for e in experts), load_s=sum(e.load_s for e in experts),
                          rss=status_bytes("VmRSS")))
        encodes.append(pool.submit(timed_write, seg.frames, models_dir / f"{mode}_segment{seg.index}.mp4"))
        sampler.phase = f"after segment {seg.index}"
        if seg.index == 0:
            sampler.marked = True  # from here on the process is in its steady state

    sampler.phase = "text encoder"
    generate_story(models, photo, PROMPTS, settings, on_segment=on_segment)
    encode_s = [f.result() for f in encodes]
    pool.shutdown()
    svi.free_memory = engine_free
    result["smaps_rollup_steady"] = smaps_rollup()
    if models.fast is not None:
        from engine.kernels.compile import compile_failure

        result["fast_path"] = models.fast.lines()
        result["weights"], result["attention"] = models.fast.weights, models.fast.attention.name
        result["compiled"] = models.fast.compiled and not any(
            compile_failure(m) for m in (models.transformer, models.transformer_2))
        result["compile_failure"] = [compile_failure(m) for m in (models.transformer, models.transformer_2)]
    if models.plan is not None:
        result["plan"] = format_plan(models.plan).splitlines()
        result["plan_vram_gib"], result["plan_ram_gib"] = models.plan.vram_bytes / GIB, models.plan.ram_bytes / GIB
    if cuda:
        stats = torch.cuda.memory_stats(device)
        result["allocator"] = {k: stats.get(k, 0) for k in ("num_alloc_retries", "num_ooms")}
    te = models.text_encoder.last if hasattr(models.text_encoder, "last") else None

    # 3. Steady state = segments 2 and 3: everything between the completions of segments 1 and 3
    a, b, n = marks[0], marks[-1], len(marks) - 1
    streamers = list((models.streamers or {}).values())
    tokens = settings.num_latent_frames * (settings.height // 16) * (settings.width // 16)
    flops = forward_flops(transformer_cfg, tokens, seq_len) * settings.num_inference_steps
    result.update(
        segment_s=(b["t"] - a["t"]) / n,
        segment_times_s=[a["t"] - t_cold] + [y["t"] - x["t"] for x, y in zip(marks, marks[1:])],
        cold_start_to_segment1_s=a["t"] - t_cold,
        cold_start=dict(load_models=result["load_models_s"], text_encoder=te.seconds if te else None,
                        placement=place_s[0] if place_s else None,
                        segment1=a["t"] - t_cold - result["load_models_s"] - (te.seconds if te else 0)
                        - (place_s[0] if place_s else 0)),
        disk_read_bytes_cold_start_proc=a["io"] - io_start,
        peak_vram_gib=torch.cuda.max_memory_reserved(device) / GIB if cuda else 0.0,
        peak_vram_allocated_gib=torch.cuda.max_memory_allocated(device) / GIB if cuda else 0.0,
        peak_rss_gib=sampler.peak / GIB, peak_rss_anon_gib=sampler.peak_anon / GIB,
        rss_at_peak=sampler.at_peak, anon_at_peak=sampler.anon_at, peak_rss_steady_gib=sampler.steady / GIB,
        rss_after_segments_gib=[round(m["rss"] / GIB, 3) for m in marks],
        disk_bytes_per_segment=(b["disk"] - a["disk"] + b["loaded"] - a["loaded"]) / n,
        disk_read_bytes_per_segment_proc=(b["io"] - a["io"]) / n if a["io"] >= 0 else None,
        pcie_bytes_per_segment=(b["pcie"] - a["pcie"]) / n,
        throttle_waits=sum(st.stats.throttle_waits for st in streamers),
        flops_per_segment=flops,
        breakdown=dict(
            denoise_forwards=sum(forward_log[a["forwards"]:b["forwards"]]) / n,
            expert_reloads=(b["load_s"] - a["load_s"]) / n,
            streaming_waits=(b["waits"] - a["waits"]) / n,
            vae_decode=sum(decode_s[a["decodes"]:b["decodes"]]) / n,
            mp4_encode=sum(encode_s[1:]) / n,  # on a worker thread, overlapping the next segment
            free_memory=sum(free_s[a["frees"]:b["frees"]]) / n,
        ),
    )
    bd = result["breakdown"]
    bd["other"] = result["segment_s"] - bd["denoise_forwards"] - bd["expert_reloads"] - bd["vae_decode"]
    result["t4_projection_s"] = (flops / T4_TFLOPS + result["disk_bytes_per_segment"] / T4_DISK_BPS
                                 + result["pcie_bytes_per_segment"] / T4_PCIE_BPS)
    if forward_log:
        later = sorted(forward_log[a["forwards"]:b["forwards"]])
        steady = later[len(later) // 2]
        result["segment1_forwards_s"] = forward_log[: a["forwards"]]
        # what segment 1's forwards took beyond steady ones: compilation, mostly (cuDNN plans, allocator)
        result["segment1_forward_excess_s"] = sum(f - steady for f in forward_log[: a["forwards"]])
    if mode == "big" and check_lora and result.get("weights") != "fp8":  # FP8 merged the LoRAs: nothing to check
        from bench.lora_check import check

        sampler.phase = "lora check"
        hw = (30, 52) if settings.height >= 480 else (settings.height // 8, settings.width // 8)
        result["lora_check"] = check(models.transformer_2, device, transformer_cfg["text_dim"], hw)
    sampler.stop = True
    out.write_text(json.dumps(result, indent=1))
    return result
