"""FP8 weights: the per-channel quantization stays within the e4m3 error bound, the linear computes the
quantized product, and a GGUF expert with LoRAs converts with the LoRAs merged first, placed by the
planner at exactly the bytes it counted."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from engine.config import LoraStrengths
from engine.kernels.fp8 import FP8, FP8_MAX, Fp8Linear, dequantize_rows, error_bound, quantize_rows
from engine.memory.planner import module_bytes
from engine.models.fp8_weights import convert_to_fp8, effective_weight, fp8_targets
from engine.models.loading import _build_tiny, load_expert_gguf
from engine.models.lora import load_lora, set_expert_strengths, set_strengths
from engine.models.lora_linear import LoraLinear
from engine.models.placement import place_by_plan, plan_models
from engine.models.presets import get_preset
from tests.support.engine_helpers import GGUF_TRANSFORMER, dequantized_reference, write_tiny_gguf_expert

GDIM = GGUF_TRANSFORMER["num_attention_heads"] * GGUF_TRANSFORMER["attention_head_dim"]
FFN = GGUF_TRANSFORMER["ffn_dim"]


def weights(seed: int = 0) -> torch.Tensor:
    """Gaussian rows at very different scales, one row with an outlier, one all zero: (64, 256)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 256, generator=g) * torch.logspace(-4, 1, 64)[:, None]
    w[3, 17] = 50.0
    w[5] = 0.0
    return w


def test_quantize_rows_stays_within_the_e4m3_bound_per_value():
    w = weights()
    q, scale = quantize_rows(w)
    assert q.dtype == FP8 and q.shape == w.shape and scale.shape == (64, 1)
    assert torch.equal(scale[:, 0], (w.abs().amax(1).clamp_min(1e-12) / FP8_MAX))  # one scale per output row
    back = dequantize_rows(q, scale)
    err = (back - w).abs()
    bound = error_bound(w, scale)
    assert (err <= bound * (1 + 1e-6)).all()
    assert (err > 0.5 * bound).any()  # the bound is tight, not vacuous
    assert back[3, 17] == 50.0 and back[5].abs().sum() == 0  # the row max is exact; a zero row stays zero
    # per channel: the outlier costs its own row precision, no other row's
    assert (err[4] <= bound[4]).all() and bound[4].max() < bound[3].max() / 100


def test_fp8_linear_computes_the_quantized_product():
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(48, 256, generator=g) * 0.02, torch.randn(48, generator=g)
    x = torch.randn(2, 5, 256, generator=g)
    lin = Fp8Linear.from_dense(w, b, torch.float32)
    y = lin(x)
    assert y.shape == (2, 5, 48)
    # the same product by hand: per-token activation scales, per-channel weight scales
    xs = x.reshape(-1, 256).abs().amax(1, keepdim=True) / FP8_MAX
    xq = (x.reshape(-1, 256) / xs).to(FP8).float() * xs
    wq = dequantize_rows(*quantize_rows(w))
    assert torch.allclose(y.reshape(-1, 48), xq @ wq.t() + b, rtol=1e-5, atol=1e-6)
    ref = F.linear(x, w, b)
    assert ((y - ref).norm() / ref.norm()).item() < 0.05  # about 3-4% for two e4m3 operands


def gguf_expert_with_loras(tmp_path, strengths=(1.0, 0.5)):
    """The tiny GGUF expert with an SVI-like and a LightX2V-like LoRA on every block linear."""
    path, config_dir, _ = write_tiny_gguf_expert(tmp_path)
    expert = load_expert_gguf(path, config_dir, "transformer", torch.float32)
    g = torch.Generator().manual_seed(5)
    for (name, rank), strength in zip((("svi", 8), ("lightx2v", 4)), strengths):
        lora = {}
        for i in range(GGUF_TRANSFORMER["num_layers"]):
            for key, out_dim, in_dim in (("self_attn.q", GDIM, GDIM), ("cross_attn.o", GDIM, GDIM),
                                         ("ffn.0", FFN, GDIM), ("ffn.2", GDIM, FFN)):
                lora[f"blocks.{i}.{key}.lora_A.default.weight"] = torch.randn(rank, in_dim, generator=g) * 0.05
                lora[f"blocks.{i}.{key}.lora_B.default.weight"] = torch.randn(out_dim, rank, generator=g) * 0.05
        load_lora(expert, lora, name, strength=strength)
    return expert, path, lora


def run(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 36, 2, 4, 4, generator=g)  # (B, C, T, h, w)
    text = torch.randn(1, 8, GGUF_TRANSFORMER["text_dim"], generator=g)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text, return_dict=False)[0]


def test_effective_weight_is_the_dequantized_weight_plus_the_weighted_loras(tmp_path):
    expert, path, _ = gguf_expert_with_loras(tmp_path, strengths=(0.75, 0.0))
    linear = expert.blocks[0].attn1.to_q
    assert isinstance(linear, LoraLinear)
    w, b = effective_weight(linear)
    ref = dequantized_reference(path).blocks[0].attn1.to_q
    down, up = linear.lora_down[:8], linear.lora_up[:, :8]  # svi's ranks; lightx2v is off
    assert torch.allclose(w, ref.weight + 0.75 * up @ down, atol=2e-4)
    assert torch.allclose(b, ref.bias)


def test_a_gguf_expert_converts_with_loras_merged_and_keeps_its_output(tmp_path):
    expert, _, _ = gguf_expert_with_loras(tmp_path)
    before = run(expert)
    n = sum(convert_to_fp8(block, torch.float32) for block in expert.blocks)
    per_block = 4 + 4 + 2  # attn1 q/k/v/o, attn2 q/k/v/o, ffn up and down
    assert n == per_block * GGUF_TRANSFORMER["num_layers"]
    assert not fp8_targets(expert.blocks[0])  # nothing left to convert
    assert not any(isinstance(m, LoraLinear) for m in expert.blocks.modules())
    after = run(expert)
    cos = F.cosine_similarity(after.flatten(), before.flatten(), dim=0).item()
    assert cos > 0.998, cos
    # converted in place, without the files it came from: a new recipe cannot be merged, and says so
    with pytest.raises(ValueError, match="without their source files.*SVIBOT_WEIGHTS=gguf"):
        set_expert_strengths(expert, {"svi": 0.5, "lightx2v": 0.5})


def test_placement_converts_vram_blocks_at_the_bytes_the_plan_counted(tmp_path):
    """The planner's FP8 sizes are the blocks' real sizes after `place_by_plan(weights="fp8")`."""
    preset = get_preset("tiny")
    models = _build_tiny(preset, torch.device("cpu"), torch.float32)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    models.transformer = gguf_expert_with_loras(tmp_path / "a")[0]
    models.transformer_2 = gguf_expert_with_loras(tmp_path / "b", strengths=(1.0, 1.0))[0]
    before = run(models.transformer)
    cpu = torch.device("cpu")
    settings = replace(preset.settings, height=64, width=64)
    plan = plan_models(models, cpu, 2**34, 2**34, settings, weights="fp8")
    assert all(loc == "vram" for _, locs in plan.blocks for loc in locs)
    place_by_plan(models, cpu, settings=settings, weights="fp8", plan=plan)
    for expert, sizes in zip((models.transformer, models.transformer_2), plan.needs.experts):
        assert all(isinstance(b.attn1.to_q, Fp8Linear) and isinstance(b.ffn.net[2], Fp8Linear) for b in expert.blocks)
        assert tuple(module_bytes(b) for b in expert.blocks) == sizes.block_bytes
    after = run(models.transformer)
    assert F.cosine_similarity(after.flatten(), before.flatten(), dim=0).item() > 0.998

    # a quality job turns LightX2V off: the FP8 weights are merged again from the mapped files ...
    quality = {"svi": 1.0, "lightx2v": 0.0}
    set_strengths(models, LoraStrengths(svi_high=1.0, svi_low=1.0, lightx2v_high=0.0, lightx2v_low=0.0))
    (tmp_path / "c").mkdir()
    reference = gguf_expert_with_loras(tmp_path / "c", strengths=(1.0, 0.0))[0]
    gguf_quality = run(reference)
    convert_to_fp8(reference.blocks, torch.float32)
    # ... to exactly what converting at those strengths gives, close to the GGUF path's output
    assert torch.equal(run(models.transformer), run(reference))
    assert F.cosine_similarity(run(models.transformer).flatten(), gguf_quality.flatten(), dim=0).item() > 0.998
    merged = [m.merged for m in models.transformer.modules() if isinstance(m, Fp8Linear) and m.merged]
    assert len(merged) == 4 * GGUF_TRANSFORMER["num_layers"] and all(x == quality for x in merged)
    # and the fast recipe back gives the first conversion bit for bit
    set_strengths(models, LoraStrengths(svi_high=1.0, svi_low=1.0, lightx2v_high=0.5, lightx2v_low=0.5))
    assert torch.equal(run(models.transformer), after)


def test_fp8_weights_on_a_gpu_without_fp8_say_why(tmp_path):
    from engine.models.config import EngineConfig
    from engine.models.loading import load_models
    from storage.errors import BadSetting

    with pytest.raises(BadSetting, match="SVIBOT_WEIGHTS=fp8 needs a CUDA GPU with FP8 tensor cores .* this device is cpu"):
        load_models(EngineConfig(preset="tiny", models_dir=tmp_path, device="cpu", weights="fp8"))


def test_weights_are_fp8_only_where_fp8_runs_and_every_block_fits():
    from types import SimpleNamespace

    from engine.memory.planner import PlacementError
    from engine.models.fast import choose_weights
    from storage.errors import BadSetting

    cpu = torch.device("cpu")
    runs = lambda device: None  # noqa: E731 - FP8 matmuls work here
    fits = SimpleNamespace(blocks=(("transformer", ("vram", "vram")), ("transformer_2", ("vram", "vram"))),
                           bytes_at=lambda where: 3 * 2**30)
    spills = SimpleNamespace(blocks=(("transformer", ("vram", "ram")), ("transformer_2", ("vram", "disk"))))

    def too_small():
        raise PlacementError("VRAM budget 6.00 GiB is below the floor of 7.10 GiB")

    weights, why, plan = choose_weights("auto", cpu, lambda: fits, probe=runs)
    assert weights == "fp8" and plan is fits and "3.00 GiB" in why
    weights, why, plan = choose_weights("auto", cpu, lambda: spills, probe=runs)
    assert weights == "gguf" and plan is None and "2 blocks would not fit VRAM as FP8" in why
    assert choose_weights("auto", cpu, too_small, probe=runs)[0] == "gguf"
    no_fp8 = lambda device: "sm_75 has no FP8 tensor cores (sm_89 and newer do)"  # noqa: E731
    weights, why, _ = choose_weights("auto", cpu, lambda: fits, probe=no_fp8)
    assert weights == "gguf" and "sm_75 has no FP8 tensor cores" in why
    with pytest.raises(BadSetting, match="SVIBOT_WEIGHTS=fp8 cannot be used here: sm_75 has no FP8"):
        choose_weights("fp8", cpu, lambda: fits, probe=no_fp8)
    with pytest.raises(BadSetting, match="SVIBOT_WEIGHTS=fp8 cannot be used here: 2 blocks would not fit"):
        choose_weights("fp8", cpu, lambda: spills, probe=runs)
    assert choose_weights("gguf", cpu, lambda: fits, probe=runs)[:2] == ("gguf", "set by SVIBOT_WEIGHTS")
