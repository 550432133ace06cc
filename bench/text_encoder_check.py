"""GPU check of engine.models.text_encoder: whole-model and VRAM-limited disk-offload runs give the same embeddings.

A UMT5 of full width with fewer layers (random weights) is saved once; each run is its own process so its peak RSS is its own.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1024**3
UMT5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, vocab_size=256384, feed_forward_proj="gated-gelu")
DRY = dict(UMT5_XXL, d_model=64, d_ff=128, d_kv=8, num_heads=8)  # --dry-run: on the CPU, small widths


def make(folder: Path, layers: int, device: str) -> None:
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    dims = UMT5_XXL if device == "cuda" else DRY
    cfg = UMT5Config(pad_token_id=0, eos_token_id=1, dropout_rate=0.0, num_layers=layers, **dims)
    with torch.device(device):
        model = UMT5EncoderModel(cfg).to(torch.bfloat16).eval()
    model.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()  # the runs that follow are other processes: leave them the VRAM


def encode(folder: Path, mode: str, headroom_gib: float, out: Path, device: str) -> dict:
    from engine.models.text_encoder import LazyTextEncoder

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 256000, (3, 512), generator=g)
    mask = torch.zeros(3, 512, dtype=torch.long)
    for i, n in enumerate((40, 120, 512)):
        mask[i, :n] = 1
    cuda = device == "cuda"
    device = torch.device(device)
    filler = None
    te = LazyTextEncoder(folder, device, torch.bfloat16, out / "offload", host_bytes=256 * 1024**2 if cuda else 1024)
    if mode == "offload":
        te.experts_placed = True
        if cuda:
            free, _ = torch.cuda.mem_get_info()
            # stands in for the placed experts: only `headroom_gib` of VRAM stays free
            filler = torch.empty(int(free - headroom_gib * GIB), dtype=torch.uint8, device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    hidden = te(ids.to(device), mask.to(device)).last_hidden_state
    torch.save(hidden.cpu(), out / f"{mode}.pt")
    del filler
    return dict(mode=te.last.mode, seconds=round(te.last.seconds, 2), disk_gib=round(te.last.disk_bytes / GIB, 3),
                streamed_gib=round(te.last.streamed_bytes / GIB, 3), encoder_gib=round(te.nbytes / GIB, 3),
                peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3),
                peak_vram_alloc_gib=round(torch.cuda.max_memory_allocated() / GIB, 3) if cuda else 0,
                module_freed=te.last_module() is None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/tmp/te_check"))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--headroom-gib", type=float, default=3.0)
    ap.add_argument("--run", choices=("whole", "offload"))
    ap.add_argument("--dry-run", action="store_true", help="small widths on the CPU")
    a = ap.parse_args()
    device = "cpu" if a.dry_run else "cuda"
    if a.run:
        print(json.dumps(encode(a.dir / "te", a.run, a.headroom_gib, a.dir, device)))
        return
    t = time.perf_counter()
    make(a.dir / "te", a.layers, device)
    print(f"wrote {a.layers}-layer UMT5 in {time.perf_counter() - t:.1f} s", flush=True)
    results = {}
    for mode in ("whole", "offload"):
        cmd = [sys.executable, __file__, "--dir", str(a.dir), "--headroom-gib", str(a.headroom_gib), "--run", mode]
        cmd += ["--dry-run"] if a.dry_run else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{mode} run failed with {proc.returncode}:\n{proc.stderr[-4000:]}")
        line = proc.stdout.strip().splitlines()[-1]
        results[mode] = json.loads(line)
        print(mode, results[mode], flush=True)
    whole, off = torch.load(a.dir / "whole.pt"), torch.load(a.dir / "offload.pt")
    diff = (whole.float() - off.float()).abs().max().item()
    rel = diff / whole.float().abs().max().item()
    print(json.dumps(dict(bit_exact=torch.equal(whole, off), max_abs_diff=diff, rel_diff=rel, **results)))


if __name__ == "__main__":
    main()
