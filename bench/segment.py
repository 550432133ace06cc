"""Seconds per SVI 2.0 Pro segment through `engine.models.loading.load_models`, LoRAs included.

`python bench/segment.py --dry-run` runs every mode at tiny sizes on the CPU; on a GPU it fills a models
dir with random files of the real layout (see bench/README.md) and runs floor, t4, big and reload, each
in its own process so that peak VRAM and RSS belong to that mode alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.measure import ATTENTION_KERNEL_KEYS, GIB, one_block_kernels, sync  # noqa: E402
from engine.config import GenerationSettings  # noqa: E402

A14B = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, text_dim=4096, num_layers=40)
UMT5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=256384,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, dropout_rate=0.0)
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
                                     feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                                     dropout_rate=0.0),
                           seq_len=32, vae_config="tiny", settings=dict(num_frames=13, height=64, width=112)),
}
PHOTO = ROOT / "examples" / "chelsea.jpg"
# The planner's budgets in the t4 mode. At smoke size (4 layers) 15 + 11 GiB hold everything, so tighter
# ones put blocks in VRAM, pinned RAM and on disk alike and exercise every path; the cap stays 15 GiB.
T4_BUDGETS = {"full": (15.0, 11.0), "smoke": (6.2, 2.9), "dry": (15.0, 11.0)}


# ---- the preset the benchmark loads ------------------------------------------------------------
def transformer_config(size: str) -> dict:
    from engine.models.presets import wan22_config_dir

    cfg = json.loads((wan22_config_dir() / "transformer" / "config.json").read_text())
    cfg.update(SIZES[size].transformer)
    return cfg


def story_settings(size: str) -> GenerationSettings:
    return GenerationSettings(seed=0, num_inference_steps=4, **SIZES[size].settings)  # guidance 1: the fast recipe


def bench_preset(name: str, size: str, models_dir: Path):
    """The real preset at full size; below it the same files and names with configs of that size."""
    from engine.models.presets import PRESETS, get_preset

    base = get_preset(name)
    if size == "full":
        return base
    preset = replace(base, name=f"{name}_{size}", config_dir=models_dir / "configs", settings=story_settings(size))
    PRESETS[preset.name] = preset  # this process only: load_models looks presets up by name
    return preset


def write_configs(models_dir: Path, size: str) -> None:
    from engine.models.presets import wan22_config_dir
    from engine.models.tiny import TINY_VAE

    for sub in ("transformer", "transformer_2"):
        (models_dir / "configs" / sub).mkdir(parents=True, exist_ok=True)
        (models_dir / "configs" / sub / "config.json").write_text(json.dumps(transformer_config(size)))
    vae = (json.loads((wan22_config_dir() / "vae" / "config.json").read_text()) if SIZES[size].vae_config == "wan22"
           else {"_class_name": "AutoencoderKLWan", **TINY_VAE})
    (models_dir / "configs" / "vae").mkdir(parents=True, exist_ok=True)
    (models_dir / "configs" / "vae" / "config.json").write_text(json.dumps(vae))


def write_files(models_dir: Path, size: str, preset_name: str, share_from: Path | None = None) -> dict:
    """The preset's random files; with `share_from`, only the experts are written and the other repos
    (VAE, text encoder, LoRAs: the same for every preset) are linked from that models dir."""
    from bench.gguf_random import write_random_expert
    from bench.model_files import snapshot_path, write_models_dir
    from engine.models.presets import get_preset

    write_configs(models_dir, size)
    preset = get_preset(preset_name)
    layout = preset_name if preset_name in ("q3_k_m", "q4_k_m") else "q4_k_m"
    if share_from is None:
        return write_models_dir(models_dir, preset.files, transformer_config(size), SIZES[size].umt5,
                                SIZES[size].seq_len, models_dir / "configs", layout, log=lambda s: print(s, flush=True))
    f = preset.files
    for repo in {f.vae_repo, f.text_encoder_repo, f.tokenizer_repo, f.svi_high_repo, f.svi_low_repo,
                 f.lightx2v_high_repo, f.lightx2v_low_repo} - {f.high_repo, f.low_repo}:
        name = "models--" + repo.replace("/", "--")
        (models_dir / name).symlink_to(Path(share_from).resolve() / name)
    written = {}
    for part, seed in (("high", 1), ("low", 2)):
        path = snapshot_path(models_dir, getattr(f, f"{part}_repo"), getattr(f, f"{part}_file"))
        t = time.perf_counter()
        written[part] = write_random_expert(path, transformer_config(size), seed, layout) / 1e9
        print(f"wrote {part}: {written[part]:.2f} GB in {time.perf_counter() - t:.1f} s", flush=True)
    return written


# ---- the floor --------------------------------------------------------------------------------
def build_vae(size: str, device, dtype):
    from diffusers import AutoencoderKLWan

    if SIZES[size].vae_config == "tiny":
        from engine.models.tiny import TINY_VAE

        vae = AutoencoderKLWan(**TINY_VAE)
    else:
        from engine.models.presets import wan22_config_dir

        vae = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(str(wan22_config_dir() / "vae")))
    return vae.to(device, dtype).eval()


def run_floor(size: str, out: Path) -> dict:
    """4 dense bf16 forwards + one VAE decode at the segment size, and which SDPA kernel runs."""
    from diffusers import WanTransformer3DModel

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    s = story_settings(size)
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
    return one_block_kernels(model, kw, ATTENTION_KERNEL_KEYS)


# ---- orchestration ----------------------------------------------------------------------------
def table(results: dict) -> str:
    floor = results["floor_s"]
    rows = ["| mode | preset | weights / attention / blocks | s/segment | x floor | peak VRAM GiB | peak RSS GiB total (anon) "
            "| disk B/steady segment (counted / proc) | forwards | waits | VAE | other | cold start to segment 1 s "
            "(of it segment 1's forwards over steady) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {"t4": 0, "big": 1, "reload": 2}
    rows_in = sorted(results["modes"].values(), key=lambda r: (r["preset"] != results.get("preset"), order.get(r["mode"], 3)))
    for r in rows_in:
        b = r["breakdown"]
        proc = r.get("disk_read_bytes_per_segment_proc")
        rows.append(
            f"| {r['mode']} | {r['preset']} | {r.get('weights', 'gguf')} / {r.get('attention', 'sdpa')} / "
            f"{'compiled' if r.get('compiled') else 'eager'} | {r['segment_s']:.2f} | {r['segment_s'] / floor:.2f} | "
            f"{r['peak_vram_gib']:.2f} | {r['peak_rss_gib']:.2f} ({r['peak_rss_anon_gib']:.2f}) | "
            f"{r['disk_bytes_per_segment']:.3g} / {proc if proc is None else f'{proc:.3g}'} | "
            f"{b['denoise_forwards']:.2f} | {b['streaming_waits']:.3f} | {b['vae_decode']:.2f} | {b['other']:.2f} | "
            f"{r['cold_start_to_segment1_s']:.1f} ({r.get('segment1_forward_excess_s', float('nan')):.1f}) |")
    f = results["floor"]
    rows.append(f"\nfloor: {floor:.2f} s (4 dense bf16 forwards of {f['forward_s']:.2f} s + VAE decode "
                f"{f['vae_decode_s']:.2f} s) on {f['gpu']}")
    by = {(r["mode"], r["preset"]): r for r in results["modes"].values()}
    main = results.get("preset")
    if ("t4", main) in by and ("reload", main) in by:
        rows.append(f"t4 vs reload ({main}): {by['reload', main]['segment_s'] / by['t4', main]['segment_s']:.2f}x "
                    "faster per steady segment")
    check = by.get(("big", main), {}).get("lora_check")
    if check:
        rows.append(f"LoRA output at {check['tokens']} tokens vs fp32 unfused reference: weight side bf16 "
                    f"{check['weight_side_bfloat16']:.2e}, fp16 {check['weight_side_float16']:.2e}; the same weights "
                    f"requantized to the file's GGUF types {check['requantized_merge']:.2e} "
                    f"({'within' if check['within_quantization_error'] else 'NOT within'} the quantization error)")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, every mode")
    ap.add_argument("--files", type=Path, help="models dir for the random files (huggingface_hub cache layout)")
    ap.add_argument("--preset", help="default: what the T4 default picks under 15 GiB VRAM + 11 GiB RAM")
    ap.add_argument("--modes", default="floor,t4,big,reload")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--size", choices=["full", "smoke"], default="full", help="smoke: 4 layers, for a quick GPU check")
    ap.add_argument("--report-only", action="store_true", help="only rebuild latest.json and the table from --out")
    ap.add_argument("--share-from", type=Path, help="models dir whose VAE, text encoder and LoRAs to link")
    ap.add_argument("--mode", help=argparse.SUPPRESS)  # child process: one mode
    args = ap.parse_args()
    size = "dry" if args.dry_run else args.size
    if args.preset is None:
        from engine.models.fit import pick_default

        args.preset = pick_default(int(15 * GIB), int(11 * GIB))
    files = args.files or Path("/tmp/svibot-bench-dry" if args.dry_run else "/tmp/svibot-bench") / args.preset
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mode:
        # Fewer fragments under the 15 GiB cap; it must be set before CUDA starts.
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        if args.mode == "floor":
            run_floor(size, args.out / "floor.json")
            return
        from bench.modes import run_mode

        preset = bench_preset(args.preset, size, files)
        run_mode(args.mode, files, preset, story_settings(size), transformer_config(size), SIZES[size].seq_len,
                 args.out / f"{args.mode}_{args.preset}.json", PHOTO, t4_budgets=T4_BUDGETS[size])
        return
    if not args.report_only and not (files / "written.json").exists():
        files.mkdir(parents=True, exist_ok=True)
        written = write_files(files, size, args.preset, args.share_from)
        (files / "written.json").write_text(json.dumps(written))
    for mode in filter(None, [] if args.report_only else args.modes.split(",")):
        t = time.perf_counter()
        cmd = [sys.executable, __file__, "--mode", mode, "--files", str(files), "--out", str(args.out),
               "--preset", args.preset]
        cmd += ["--dry-run"] if args.dry_run else ["--size", size]
        code = subprocess.call(cmd)
        print(f"mode {mode}: exit {code} after {time.perf_counter() - t:.0f} s", flush=True)
    results = {"size": size, "preset": args.preset, "modes": {}}
    if (args.out / "floor.json").exists():
        results["floor"] = json.loads((args.out / "floor.json").read_text())
        results["floor_s"] = results["floor"]["floor_s"]
    for p in sorted(args.out.glob("*_*.json")):
        r = json.loads(p.read_text())
        if "segment_s" in r:
            results["modes"][p.stem] = r
            if "floor_s" in results:
                r["ratio_to_floor"] = r["segment_s"] / results["floor_s"]
    (args.out / "latest.json").write_text(json.dumps(results, indent=1))
    if "floor_s" in results:
        text = table(results)
        (args.out / "latest.md").write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    main()
