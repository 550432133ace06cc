"""The attention self-test: a right kernel is accepted and a wrong one rejected, the fastest right one wins
only by a margin over SDPA, SVIBOT_ATTENTION parses strictly, and the CPU path stays SDPA bit for bit."""
from __future__ import annotations

import math

import pytest
import torch

from engine.kernels.attention import (
    CHOICES, TOLERANCE, choose_attention, dispatch_kernel, make_slice, parse_attention, pick, self_test,
)
from engine.models.tiny import build_tiny_transformer
from storage.errors import BadSetting

TOKENS, HEAD_DIM, HEADS = 96, 16, 2


def right_kernel(q, k, v):
    """Attention written out by hand, (B, S, H, D) in and out: what every backend must compute."""
    qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))  # (B, H, S, D)
    w = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (w @ vh).transpose(1, 2).to(q.dtype)


def unscaled_kernel(q, k, v):
    """A plausible bug: the 1/sqrt(d) scale forgotten, so the softmax is far too peaked."""
    qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))
    return (torch.softmax(qh @ kh.transpose(-1, -2), dim=-1) @ vh).transpose(1, 2).to(q.dtype)


def fixed_timer(times):
    return lambda name, fn, args: times[name]


def slice_():
    return make_slice(TOKENS, HEAD_DIM, HEADS, torch.device("cpu"), torch.float32)


def test_parse_attention_accepts_the_known_names_and_names_a_bad_value():
    assert parse_attention(None) == "auto" and parse_attention(" SDPA-cuDNN ") == "sdpa-cudnn"
    assert {"auto", "sdpa", "sdpa-flash", "sdpa-efficient", "sage", "flash"} <= set(CHOICES)
    with pytest.raises(BadSetting, match=r"SVIBOT_ATTENTION must be one of auto, sdpa.* but is 'xformer'"):
        parse_attention("xformer")


def test_self_test_accepts_a_right_kernel_and_rejects_a_wrong_one():
    kernels = {"sdpa": dispatch_kernel("sdpa"), "right": right_kernel, "wrong": unscaled_kernel}
    trials = {t.name: t for t in self_test(kernels, *slice_(), timer=fixed_timer({"sdpa": 1.0, "right": 0.5, "wrong": 0.1}))}
    assert trials["sdpa"].ok and trials["sdpa"].rel_err < 1e-5
    assert trials["right"].ok and trials["right"].rel_err < 1e-5 and trials["right"].cosine > 0.99999
    wrong = trials["wrong"]
    assert not wrong.ok and wrong.rel_err > TOLERANCE and "rel err" in wrong.reason
    # the wrong kernel is the fastest, yet the right one wins
    name, why = pick(list(trials.values()))
    assert name == "right" and "500.00 ms vs SDPA 1000.00 ms" in why


def test_a_kernel_that_raises_or_returns_nan_is_rejected_and_sdpa_stays():
    def broken(q, k, v):
        raise RuntimeError("no kernel image is available for execution on the device")

    def nan(q, k, v):
        return torch.full_like(q, float("nan"))

    kernels = {"sdpa": dispatch_kernel("sdpa"), "broken": broken, "nan": nan}
    trials = {t.name: t for t in self_test(kernels, *slice_(), timer=fixed_timer({"sdpa": 1.0, "nan": 0.1}))}
    assert not trials["broken"].ok and "no kernel image" in trials["broken"].reason
    assert not trials["nan"].ok and math.isinf(trials["nan"].rel_err)
    assert pick(list(trials.values()))[0] == "sdpa"


def test_a_right_kernel_within_the_margin_of_sdpa_does_not_replace_it():
    kernels = {"sdpa": dispatch_kernel("sdpa"), "right": right_kernel}
    name, why = pick(self_test(kernels, *slice_(), timer=fixed_timer({"sdpa": 1.0, "right": 0.99})))
    assert name == "sdpa" and "no kernel beat SDPA" in why


def test_choose_attention_with_fake_kernels_reports_every_trial():
    choice = choose_attention("auto", torch.device("cpu"), torch.float32, TOKENS, HEAD_DIM, HEADS,
                              kernels={"sdpa": dispatch_kernel("sdpa"), "right": right_kernel, "wrong": unscaled_kernel},
                              timer=fixed_timer({"sdpa": 2.0, "right": 1.0, "wrong": 0.5}))
    assert choice.name == "right" and [t.name for t in choice.trials] == ["sdpa", "right", "wrong"]


def test_explicit_kernels_are_checked_on_this_device():
    cpu = torch.device("cpu")
    with pytest.raises(BadSetting, match="SVIBOT_ATTENTION=sage cannot run here: needs CUDA"):
        choose_attention("sage", cpu, torch.float32, TOKENS, HEAD_DIM, HEADS)
    choice = choose_attention("sdpa", cpu, torch.float32, TOKENS, HEAD_DIM, HEADS)
    assert choice.name == "sdpa" and "set by SVIBOT_ATTENTION" in choice.reason and choice.trials[0].ok


def test_the_cpu_path_stays_sdpa_and_bit_identical(tiny_models):
    """load_models on the CPU chose SDPA without a test, set no backend, and computes exactly what a
    freshly built model with the same weights computes."""
    fast = tiny_models.fast
    assert fast.attention.name == "sdpa" and fast.attention.trials == () and "CPU" in fast.attention.reason
    assert not fast.compiled and fast.weights == "gguf"
    expert = tiny_models.transformer
    procs = [m.processor for m in expert.modules() if hasattr(m, "processor")]
    assert procs and all(getattr(p, "_attention_backend", None) is None for p in procs)
    fresh = build_tiny_transformer(0)
    fresh.load_state_dict(expert.state_dict())
    g = torch.Generator().manual_seed(0)
    kw = dict(hidden_states=torch.randn(1, 36, 3, 8, 8, generator=g), timestep=torch.tensor([700.0]),
              encoder_hidden_states=torch.randn(1, 8, 32, generator=g), return_dict=False)
    with torch.inference_mode():
        assert torch.equal(expert(**kw)[0], fresh(**kw)[0])
