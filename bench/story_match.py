"""One story through the stock path and through the fast path: the same frame count, and how close the frames are.

Each variant runs in its own process through `engine.models.loading.load_models` (LoRAs included) and
`engine.svi.generate_story`, on `bench/segment.py`'s random files of the real layout, with the same photo,
prompts and seed, and saves the story's frames; the parent compares them segment by segment (PSNR in dB
over uint8 RGB, and the largest pixel difference). `--size smoke` keeps the real widths and segment size
(832x480x81, 32,760 tokens, so the FP8 and attention kernels are the full-size ones) with 4 of the 40 layers.

  stock        SVIBOT_WEIGHTS=gguf SVIBOT_ATTENTION=sdpa SVIBOT_COMPILE=off: GGUF dequantized per call, eager
  gguf+compile SVIBOT_WEIGHTS=gguf, compiled blocks (what a T4 runs, there in fp16)
  fast         SVIBOT_WEIGHTS=auto SVIBOT_COMPILE=auto: FP8 linears and compiled blocks where the GPU has them

`python bench/story_match.py --size dry` runs it at tiny sizes on the CPU (the fast path is eager GGUF there).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.modes import PROMPTS  # noqa: E402
from bench.segment import PHOTO, bench_preset, story_settings, write_files  # noqa: E402

VARIANTS = {
    "stock": dict(SVIBOT_WEIGHTS="gguf", SVIBOT_ATTENTION="sdpa", SVIBOT_COMPILE="off"),
    "gguf+compile": dict(SVIBOT_WEIGHTS="gguf", SVIBOT_ATTENTION="auto", SVIBOT_COMPILE="auto"),
    "fast": dict(SVIBOT_WEIGHTS="auto", SVIBOT_ATTENTION="auto", SVIBOT_COMPILE="auto"),
}


def run_variant(name: str, size: str, preset_name: str, files: Path, out: Path) -> None:
    """Child process: the story through the real loader with this variant's settings; frames to `out`."""
    from engine.models.config import EngineConfig
    from engine.models.loading import load_models
    from engine.svi import generate_story

    cuda = torch.cuda.is_available()
    env = os.environ
    preset = bench_preset(preset_name, size, files)
    config = EngineConfig(preset=preset.name, models_dir=files, device="cuda" if cuda else "cpu",
                          dtype="bfloat16" if cuda else "float32", attention=env["SVIBOT_ATTENTION"],
                          compile=env["SVIBOT_COMPILE"], weights=env["SVIBOT_WEIGHTS"])
    t = time.perf_counter()
    models = load_models(config)
    times = []
    segments = generate_story(models, PHOTO, PROMPTS, story_settings(size),
                              on_segment=lambda s: times.append(time.perf_counter() - t))
    np.savez(out, *[s.frames for s in segments])
    meta = {"fast_path": models.fast.lines() if models.fast else None, "segment_done_s": times}
    out.with_suffix(".json").write_text(json.dumps(meta))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["smoke", "dry"], default="smoke")
    ap.add_argument("--preset", default="q3_k_m")
    ap.add_argument("--files", type=Path, help="models dir for the random files (default /tmp/svibot-story-<size>)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # child process: one variant
    args = ap.parse_args()
    files = args.files or Path(f"/tmp/svibot-story-{args.size}")
    frames_dir = files / "frames"
    if args.variant:
        run_variant(args.variant, args.size, args.preset, files, frames_dir / f"{args.variant}.npz")
        return
    if not (files / "written.json").exists():
        files.mkdir(parents=True, exist_ok=True)
        (files / "written.json").write_text(json.dumps(write_files(files, args.size, args.preset)))
    frames_dir.mkdir(exist_ok=True)
    names = args.variants.split(",")
    wall = {}
    for name in names:
        t = time.perf_counter()
        code = subprocess.call([sys.executable, __file__, "--variant", name, "--size", args.size,
                                "--preset", args.preset, "--files", str(files)], env={**os.environ, **VARIANTS[name]})
        wall[name] = time.perf_counter() - t
        print(f"{name}: exit {code} after {wall[name]:.0f} s", flush=True)
    stories = {n: np.load(frames_dir / f"{n}.npz") for n in names if (frames_dir / f"{n}.npz").exists()}
    ref = stories.get("stock")
    lines = ["| variant | fast path | frames per segment | PSNR vs stock per segment, dB | max pixel diff | segment done at s |",
             "|---|---|---|---|---|---|"]
    result = {"size": args.size, "preset": args.preset, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available()
              else "cpu", "variants": {}}
    for name, story in stories.items():
        segs = [story[k] for k in sorted(story.files, key=lambda k: int(k.split("_")[1]))]
        meta = json.loads((frames_dir / f"{name}.json").read_text())
        r = {"frames": [int(s.shape[0]) for s in segs], "fast_path": meta["fast_path"],
             "segment_done_s": meta["segment_done_s"]}
        if ref is not None:
            ref_segs = [ref[k] for k in sorted(ref.files, key=lambda k: int(k.split("_")[1]))]
            r["same_frame_count"] = r["frames"] == [int(s.shape[0]) for s in ref_segs]
            r["psnr_db"] = [psnr(a, b) for a, b in zip(segs, ref_segs)]
            r["max_abs_diff"] = [int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(segs, ref_segs)]
        result["variants"][name] = r
        # "weights: fp8 (why)", "attention: sdpa (why)", "compile: on (why)" -> "fp8 / sdpa / compile on"
        short = {x.split(":")[0]: x.split(":", 1)[1].split("(")[0].strip() for x in meta["fast_path"] or []}
        fp = f"{short.get('weights')} / {short.get('attention')} / compile {short.get('compile')}"
        lines.append(f"| {name} | {fp} | {r['frames']} | {', '.join(f'{p:.1f}' for p in r.get('psnr_db', []))} | "
                     f"{r.get('max_abs_diff')} | {', '.join(f'{s:.1f}' for s in r['segment_done_s'])} |")
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"story_match_{args.size}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"story_match_{args.size}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
