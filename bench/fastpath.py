"""Per-forward speed and quality of the fast paths against the stock dense floor, at full size, one process.

One Wan 2.2 A14B expert (random Q4_K_M GGUF, 40 blocks) with the SVI 2.0 Pro (rank 128) and LightX2V
(rank 64) LoRAs of the real key formats, loaded and placed by the engine's own code, then timed at
32,760 tokens in bf16 as:

  stock floor   dense bf16 WanTransformer3DModel, PyTorch SDPA (bench/segment.py's floor), + VAE decode
  gguf          the engine's GGUF path: dequantize per call, LoRAs on the weight side (today's big mode)
  gguf+compile  the same, repeated block compiled (engine.kernels.compile)
  fp8           block linears converted to FP8 at placement, LoRAs merged (engine.models.fast)
  fp8+compile   the same, compiled
  fp8 + each attention kernel that passes the start-up self-test (eager)

Quality: every variant's output against the gguf path's on the same inputs (cosine, relative L2 error,
max relative error). Kernels that ran: torch.profiler over one block of each variant. Results go to
`--out/fastpath.json` after every step (a cut-off run keeps what it measured) and a table at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.measure import ATTENTION_KERNEL_KEYS, GIB, one_block_kernels, sync  # noqa: E402
from bench.segment import run_floor, story_settings, transformer_config  # noqa: E402

FAST = dict(svi=1.0, lightx2v=0.5)  # the high-noise expert's strengths in the SVI workflow


def write_inputs(files: Path, size: str) -> dict:
    from bench.gguf_random import write_random_expert
    from bench.model_files import lightx2v_lora, random_pool, svi_lora, write_safetensors

    cfg = transformer_config(size)
    (files / "configs" / "transformer").mkdir(parents=True, exist_ok=True)
    (files / "configs" / "transformer" / "config.json").write_text(json.dumps(cfg))
    paths = {"expert": files / "high.gguf", "svi": files / "svi.safetensors", "lightx2v": files / "lightx2v.safetensors"}
    if not paths["expert"].exists():
        write_random_expert(paths["expert"], cfg, 1, "q4_k_m")
        pool = random_pool()
        d, f, n = cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["ffn_dim"], cfg["num_layers"]
        write_safetensors(paths["svi"], svi_lora(n, d, f), pool)
        write_safetensors(paths["lightx2v"], lightx2v_lora(n, d, f), pool)
    return paths


def load_expert(paths: dict, files: Path, device, dtype):
    """The engine's loader, LoRAs and placement (every block resident), as load_models does it."""
    from engine.memory.streaming import place_model
    from engine.models.loading import load_expert_gguf
    from engine.models.lora import load_lora, read_lora_file
    from engine.models.placement import _prepare_block

    model = load_expert_gguf(paths["expert"], files / "configs", "transformer", dtype)
    for name, strength in FAST.items():
        load_lora(model, read_lora_file(paths[name]), name, strength=strength)
    streamer = place_model(model, ["vram"] * len(model.blocks), device, prepare=_prepare_block(dtype))
    return model, streamer


def time_forward(model, kw, repeats: int = 2) -> tuple[float, float, torch.Tensor]:
    """(first call s, median of the next `repeats` s, output of the last call)."""
    sync()
    t = time.perf_counter()
    out = model(**kw)[0]
    sync()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = model(**kw)[0]
        sync()
        times.append(time.perf_counter() - t)
    return first, sorted(times)[len(times) // 2], out


def quality(out: torch.Tensor, ref: torch.Tensor) -> dict:
    a, b = out.float().flatten(), ref.float().flatten()
    diff = (a - b).abs()
    return dict(cosine=torch.nn.functional.cosine_similarity(a, b, dim=0).item(),
                rel_l2=(diff.norm() / b.norm()).item(),
                max_rel=(diff.max() / b.abs().max()).item(),
                finite=bool(torch.isfinite(a).all()))


def kernels_of(model, kw) -> list[str]:
    """GPU kernels one block launches (attention and matmuls), from the profiler."""
    keys = ATTENTION_KERNEL_KEYS + ("gemm", "gmma", "xmma", "cutlass", "sm90", "triton")
    return [n[:140] for n in one_block_kernels(model, kw, keys)]


def uncompile(model) -> None:
    from engine.kernels.compile import repeated_blocks

    for block in repeated_blocks(model):
        block.__dict__.pop("forward", None)
        block._svibot_compiled = False
    torch._dynamo.reset()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=Path, default=Path("/tmp/svibot-fastpath"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--size", choices=["full", "smoke", "dry"], default="full", help="dry: tiny widths on the CPU")
    ap.add_argument("--steps", default="floor,gguf,ggufc,fp8c,fp8,attn,kernels")
    ap.add_argument("--report-only", action="store_true", help="rebuild fastpath.md from --out/fastpath.json")
    args = ap.parse_args()
    if args.report_only:
        report(json.loads((args.out / "fastpath.json").read_text()), args.out / "fastpath.md")
        return
    steps = args.steps.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    args.files.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device, dtype = torch.device("cuda" if cuda else "cpu"), torch.bfloat16 if cuda else torch.float32
    ckw = {} if cuda else {"backend": "eager"}  # the CPU dry run only traces
    if not cuda:
        steps = [x for x in steps if x != "kernels"]
    res: dict = {"gpu": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                 "size": args.size, "rows": {}}
    save = lambda: (args.out / "fastpath.json").write_text(json.dumps(res, indent=1))
    t0 = time.perf_counter()
    stamp = lambda what: print(f"[{time.perf_counter() - t0:6.1f} s] {what}", flush=True)

    if "floor" in steps:
        res["floor"] = run_floor(args.size, args.out / "fastpath_floor.json")
        stamp(f"floor: forward {res['floor']['forward_s']:.3f} s, VAE {res['floor']['vae_decode_s']:.3f} s")
        save()
    paths = write_inputs(args.files, args.size)
    stamp("files written")
    s = story_settings(args.size)
    cfg = transformer_config(args.size)
    t = time.perf_counter()
    model, _streamer = load_expert(paths, args.files, device, dtype)
    res["load_place_s"] = time.perf_counter() - t
    stamp(f"expert loaded and placed in {res['load_place_s']:.1f} s")
    g = torch.Generator(device).manual_seed(0)
    T, h, w = s.num_latent_frames, s.height // 8, s.width // 8
    from bench.segment import SIZES

    kw = dict(hidden_states=torch.randn(1, 36, T, h, w, device=device, dtype=dtype, generator=g),
              timestep=torch.tensor([900.0], device=device),
              encoder_hidden_states=torch.randn(1, SIZES[args.size].seq_len, cfg["text_dim"], device=device,
                                                dtype=dtype, generator=g),
              return_dict=False)
    from engine.kernels.attention import apply_attention, choose_attention, format_choice
    from engine.kernels.compile import compile_blocks
    from engine.models.fp8_weights import convert_to_fp8

    ref = None

    def row(name, **extra):
        nonlocal ref
        try:
            first, steady, out = time_forward(model, kw)
        except Exception as err:  # record and go on: one failing variant must not lose the others
            res["rows"][name] = {"error": f"{type(err).__name__}: {err}"[:400], **extra}
            traceback.print_exc()
            save()
            return
        r = {"forward_s": steady, "first_call_s": first, **extra}
        if ref is None:
            ref = out.float().clone()
        r.update(quality(out, ref))
        r["peak_vram_gib"] = torch.cuda.max_memory_allocated() / GIB if cuda else 0.0
        res["rows"][name] = r
        stamp(f"{name}: {steady:.3f} s/forward (first {first:.1f} s), cosine {r['cosine']:.5f}, max rel {r['max_rel']:.2e}")
        save()

    with torch.inference_mode():
        if "gguf" in steps:
            row("gguf", weights="gguf", attention="sdpa", compiled=False)
        if "kernels" in steps:
            res["kernels_gguf"] = kernels_of(model, kw)
        t = time.perf_counter()
        n = sum(convert_to_fp8(b, dtype) for b in model.blocks)
        sync()
        res["fp8_convert_s"], res["fp8_linears"] = time.perf_counter() - t, n
        if cuda:
            torch.cuda.empty_cache()
        stamp(f"{n} linears to FP8 in {res['fp8_convert_s']:.1f} s; VRAM "
              f"{torch.cuda.memory_allocated() / GIB if cuda else 0:.1f} GiB")
        if "fp8c" in steps:
            compile_blocks(model, **ckw)
            row("fp8+compile", weights="fp8", attention="sdpa", compiled=True)
            if "kernels" in steps:
                res["kernels_fp8_compiled"] = kernels_of(model, kw)
            uncompile(model)
        if "fp8" in steps:
            row("fp8", weights="fp8", attention="sdpa", compiled=False)
        if "attn" in steps:
            tokens = s.num_latent_frames * (s.height // 16) * (s.width // 16)
            choice = choose_attention("auto", device, dtype, tokens, cfg["attention_head_dim"])
            res["attention_self_test"] = format_choice(choice)
            print("\n".join(res["attention_self_test"]), flush=True)
            for trial in choice.trials:
                if trial.ok and trial.name != "sdpa":
                    from engine.kernels.attention import AttentionChoice

                    apply_attention(model, AttentionChoice(trial.name, "bench"))
                    row(f"fp8 attn={trial.name}", weights="fp8", attention=trial.name, compiled=False)
            model.reset_attention_backend()
        if "ggufc" in steps:  # last: it needs the GGUF expert again
            del model
            torch._dynamo.reset()
            model, _streamer = load_expert(paths, args.files, device, dtype)
            compile_blocks(model, **ckw)
            row("gguf+compile", weights="gguf", attention="sdpa", compiled=True)
            if "kernels" in steps and "error" not in res["rows"]["gguf+compile"]:
                res["kernels_gguf_compiled"] = kernels_of(model, kw)
    res["total_s"] = time.perf_counter() - t0
    save()
    report(res, args.out / "fastpath.md")


def report(res: dict, path: Path) -> None:
    text = [table(res), ""]
    if res.get("attention_self_test"):
        text += ["Attention self-test (32,760 tokens, 4 heads of 128, bf16):", "```", *res["attention_self_test"], "```"]
    for key, what in (("kernels_gguf", "GGUF path"), ("kernels_fp8_compiled", "FP8, compiled"),
                      ("kernels_gguf_compiled", "GGUF, compiled")):
        if res.get(key):
            text += [f"Kernels one block launched ({what}, torch.profiler):", "```", *res[key], "```"]
    extra = {k: res[k] for k in ("load_place_s", "fp8_convert_s", "fp8_linears", "total_s") if k in res}
    text.append(f"Other numbers: {json.dumps(extra)}")
    path.write_text("\n".join(text) + "\n")
    print("\n".join(text))


def table(res: dict) -> str:
    floor = res.get("floor")
    lines = ["| variant | s/forward | x stock forward | est. s/segment | x stock floor | cosine vs gguf | rel L2 | max rel | first call s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:80]} |||||||")
            continue
        seg = 4 * r["forward_s"] + (floor["vae_decode_s"] if floor else float("nan"))
        lines.append(f"| {name} | {r['forward_s']:.3f} | {r['forward_s'] / floor['forward_s'] if floor else float('nan'):.3f} | "
                     f"{seg:.2f} | {seg / floor['floor_s'] if floor else float('nan'):.3f} | {r['cosine']:.5f} | "
                     f"{r['rel_l2']:.2e} | {r['max_rel']:.2e} | {r['first_call_s']:.1f} |")
    if floor:
        lines.append(f"\nstock floor: {floor['floor_s']:.2f} s = 4 x {floor['forward_s']:.3f} s dense bf16 SDPA forwards "
                     f"+ VAE decode {floor['vae_decode_s']:.2f} s on {res['gpu']}; SDPA kernels {floor.get('sdpa_kernels')}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
