"""Attention kernel chosen per device by a start-up self-test, set through diffusers' attention dispatch.

Every Wan attention call goes through `diffusers.models.attention_dispatch.dispatch_attention_fn` with the
backend its processor carries; `ModelMixin.set_attention_backend` sets that backend on every processor.
The engine never patches diffusers: it only picks the backend name.

The self-test runs each available candidate on a real-shaped slice of self-attention (the segment's own
token count and head size, fewer heads), compares sampled query rows with an fp32 reference computed on
the same bf16/fp16 inputs, and times it. The fastest candidate within the tolerance wins, if it beats
PyTorch's own SDPA choice by a margin; otherwise SDPA stays.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from storage.errors import BadSetting

log = logging.getLogger(__name__)

# SVIBOT_ATTENTION value -> diffusers AttentionBackendName value
BACKENDS = {
    "sdpa": "native",  # torch.nn.functional.scaled_dot_product_attention, PyTorch picks the kernel
    "sdpa-cudnn": "_native_cudnn",
    "sdpa-flash": "_native_flash",
    "sdpa-efficient": "_native_efficient",
    "sage": "sage",  # SageAttention >= 2.1.1 (diffusers' requirement)
    "flash": "flash",  # flash-attn 2
    "flash3": "_flash_3",  # flash-attn 3 (Hopper)
}
CHOICES = ("auto", *BACKENDS)
REFERENCE = "sdpa"
TOLERANCE = 0.03  # relative L2 error of sampled rows vs fp32; bf16 kernels land near 3e-3, int8 Sage near 1.5e-2
MARGIN = 0.03  # a candidate must be this much faster than SDPA to replace it (below that it is noise)
SAMPLE_ROWS = 256  # query rows checked against the fp32 reference
SLICE_HEADS = 4  # heads in the self-test slice; the token count and head size are the segment's own


def parse_attention(value: str | None) -> str:
    """SVIBOT_ATTENTION: auto (default) or one backend name; anything else is a clear error."""
    v = (value or "auto").strip().lower()
    if v not in CHOICES:
        raise BadSetting(f"SVIBOT_ATTENTION must be one of {', '.join(CHOICES)} but is {value!r}")
    return v


@dataclass(frozen=True)
class Trial:
    """One candidate's self-test: accepted or not, its error against fp32, its time, or why it did not run."""

    name: str
    ok: bool
    rel_err: float = math.nan
    cosine: float = math.nan
    seconds: float = math.nan
    reason: str = ""

    def line(self) -> str:
        if not math.isfinite(self.seconds):
            return f"{self.name}: skipped ({self.reason})"
        verdict = "ok" if self.ok else f"rejected ({self.reason})"
        return f"{self.name}: {self.seconds * 1e3:.2f} ms, rel err {self.rel_err:.1e}, cosine {self.cosine:.6f}, {verdict}"


@dataclass(frozen=True)
class AttentionChoice:
    name: str  # an SVIBOT_ATTENTION value
    reason: str
    trials: tuple[Trial, ...] = ()

    @property
    def backend(self) -> str:
        return BACKENDS[self.name]


def availability(name: str, device: torch.device) -> str | None:
    """None if diffusers can run this backend here, else why not (missing package, wrong device)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    if name != REFERENCE and device.type != "cuda":
        return "needs CUDA"
    try:
        _check_attention_backend_requirements(AttentionBackendName(BACKENDS[name]))
    except (RuntimeError, ValueError) as err:
        return str(err).split(".")[0]
    return None


def dispatch_kernel(name: str) -> Callable:
    """fn(q, k, v) -> out, all (B, S, H, D) as Wan's processor passes them, through diffusers' dispatch."""
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    backend = AttentionBackendName(BACKENDS[name])
    return lambda q, k, v: dispatch_attention_fn(q, k, v, backend=backend)


def make_slice(tokens: int, head_dim: int, heads: int, device, dtype, seed: int = 0):
    """q, k, v of shape (1, tokens, heads, head_dim) with unit-variance entries, like RMS-normed q/k."""
    g = torch.Generator(device).manual_seed(seed)
    return [torch.randn(1, tokens, heads, head_dim, device=device, dtype=dtype, generator=g) for _ in range(3)]


def reference_rows(q, k, v, rows: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v in fp32 for the query rows `rows`: (1, len(rows), H, D)."""
    qs = q[:, rows].float().transpose(1, 2)  # (1, H, R, D)
    kf, vf = k.float().transpose(1, 2), v.float().transpose(1, 2)  # (1, H, S, D)
    weights = torch.softmax(qs @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (1, H, R, S)
    return (weights @ vf).transpose(1, 2)  # (1, R, H, D)


def compare(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(relative L2 error, cosine similarity) of `out` against `ref`; NaN/inf gives (inf, nan)."""
    a, b = out.float().flatten(), ref.float().flatten()
    if not torch.isfinite(a).all():
        return math.inf, math.nan
    rel = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    return rel, cos


def time_kernel(fn: Callable, args, device: torch.device, repeats: int = 3) -> float:
    """Median seconds of `fn(*args)` after one warm-up, with CUDA events on a GPU."""
    fn(*args)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn(*args)
            samples.append(time.perf_counter() - t)
    return sorted(samples)[len(samples) // 2]


def self_test(kernels: dict[str, Callable], q, k, v, timer: Callable | None = None,
              tolerance: float = TOLERANCE) -> list[Trial]:
    """Run, check and time each kernel on (q, k, v); a kernel that raises is rejected with its error."""
    timer = timer or (lambda name, fn, args: time_kernel(fn, args, q.device))
    rows = torch.linspace(0, q.shape[1] - 1, min(SAMPLE_ROWS, q.shape[1]), device=q.device).round().long()
    ref = reference_rows(q, k, v, rows)
    trials = []
    for name, fn in kernels.items():
        try:
            with torch.inference_mode():
                out = fn(q, k, v)
                if tuple(out.shape) != tuple(q.shape):
                    raise ValueError(f"returned shape {tuple(out.shape)}, expected {tuple(q.shape)}")
                rel, cos = compare(out[:, rows], ref)
                seconds = timer(name, fn, (q, k, v))
        except Exception as err:  # a kernel that cannot run here is not a start-up failure
            trials.append(Trial(name, False, reason=f"{type(err).__name__}: {err}"[:200]))
            continue
        ok = rel <= tolerance
        trials.append(Trial(name, ok, rel, cos, seconds, "" if ok else f"rel err {rel:.1e} > {tolerance:g}"))
    return trials


def pick(trials: list[Trial], margin: float = MARGIN) -> tuple[str, str]:
    """(winner, why): the fastest accepted trial if it beats SDPA by `margin`, else SDPA."""
    ref = next((t for t in trials if t.name == REFERENCE and t.ok), None)
    passed = sorted((t for t in trials if t.ok), key=lambda t: t.seconds)
    if not passed:
        return REFERENCE, "no candidate passed the self-test; SDPA is the fallback"
    best = passed[0]
    if ref is None:
        return best.name, f"SDPA failed its self-test; {best.name} is the fastest that passed ({best.seconds * 1e3:.2f} ms)"
    if best.name == REFERENCE or best.seconds > ref.seconds * (1 - margin):
        return REFERENCE, (f"no kernel beat SDPA ({ref.seconds * 1e3:.2f} ms) by {margin:.0%} "
                           f"among {len(passed)} that passed")
    return best.name, (f"fastest of {len(passed)} that passed: {best.seconds * 1e3:.2f} ms vs SDPA "
                       f"{ref.seconds * 1e3:.2f} ms, rel err {best.rel_err:.1e}")


def choose_attention(setting: str, device: torch.device, dtype: torch.dtype, tokens: int, head_dim: int,
                     heads: int = SLICE_HEADS, kernels: dict[str, Callable] | None = None,
                     timer: Callable | None = None) -> AttentionChoice:
    """The kernel for this device: `setting` is a parsed SVIBOT_ATTENTION value.

    On the CPU `auto` is SDPA without a test (nothing else runs there). An explicit choice is checked
    for availability and correctness and raises BadSetting if it fails either.
    """
    if setting == "auto" and device.type != "cuda" and kernels is None:
        return AttentionChoice(REFERENCE, "CPU: PyTorch SDPA (the only kernel here)")
    if kernels is None:
        names = list(BACKENDS) if setting == "auto" else [setting]
        kernels, skipped = {}, []
        for name in names:
            why = availability(name, device)
            if why is None:
                kernels[name] = dispatch_kernel(name)
            else:
                skipped.append(Trial(name, False, reason=why))
        if setting != "auto" and skipped:
            raise BadSetting(f"SVIBOT_ATTENTION={setting} cannot run here: {skipped[0].reason}")
    else:
        skipped = []
    q, k, v = make_slice(tokens, head_dim, heads, device, dtype)
    trials = self_test(kernels, q, k, v, timer) + skipped
    del q, k, v
    if setting != "auto":
        t = trials[0]
        if not t.ok:
            raise BadSetting(f"SVIBOT_ATTENTION={setting} failed its self-test on this device: {t.reason}")
        return AttentionChoice(setting, f"set by SVIBOT_ATTENTION; self-test {t.line()}", tuple(trials))
    name, why = pick(trials)
    return AttentionChoice(name, why, tuple(trials))


def apply_attention(model: torch.nn.Module, choice: AttentionChoice) -> None:
    """Set the chosen backend on every attention processor of `model`; SDPA leaves diffusers' default."""
    if choice.name == REFERENCE:
        return  # diffusers' default is already native SDPA: nothing changes, bit for bit
    model.set_attention_backend(choice.backend)


def format_choice(choice: AttentionChoice) -> list[str]:
    lines = [f"attention: {choice.name} ({choice.reason})"]
    lines += [f"  self-test {t.line()}" for t in choice.trials]
    return lines
