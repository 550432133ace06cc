"""Weight-side LoRAs: the same output as PEFT's unfused adapters (diffusers' own loader), on plain and GGUF
experts, with per-recipe strength changes that need no reload; key formats mapped as diffusers maps them."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from diffusers.loaders.lora_conversion_utils import (
    _convert_musubi_wan_lora_to_diffusers,
    _convert_non_diffusers_wan_lora_to_diffusers,
)
from safetensors.torch import save_file

from engine.config import LoraStrengths
from engine.errors import LoraMismatch
from engine.models.loading import load_expert_gguf
from engine.models.lora import load_lora, parse_lora, read_lora_file, set_expert_strengths, set_strengths
from engine.models.lora_linear import LoraLinear, lora_linears
from engine.models.tiny import TINY_TRANSFORMER, build_tiny_transformer
from tests.support.engine_helpers import GGUF_TRANSFORMER, dequantized_reference, write_tiny_gguf_expert

RANK = 4
DIM = TINY_TRANSFORMER["num_attention_heads"] * TINY_TRANSFORMER["attention_head_dim"]
GDIM = GGUF_TRANSFORMER["num_attention_heads"] * GGUF_TRANSFORMER["attention_head_dim"]


def lora_pair(seed: int, out_dim: int, in_dim: int, rank: int = RANK) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rank, in_dim, generator=g) * 0.3, torch.randn(out_dim, rank, generator=g) * 0.3  # A, B


def svi_official_lora(dim: int = DIM, ffn: int = TINY_TRANSFORMER["ffn_dim"]) -> dict:
    """Keys as SVI 2.0 Pro ships them: PEFT names with `.default`, no prefix."""
    a_q, b_q = lora_pair(1, dim, dim)
    a_o, b_o = lora_pair(2, dim, dim)
    a_f, b_f = lora_pair(4, dim, ffn)
    return {
        "blocks.0.self_attn.q.lora_A.default.weight": a_q, "blocks.0.self_attn.q.lora_B.default.weight": b_q,
        "blocks.1.cross_attn.o.lora_A.default.weight": a_o, "blocks.1.cross_attn.o.lora_B.default.weight": b_o,
        "blocks.0.ffn.2.lora_A.default.weight": a_f, "blocks.0.ffn.2.lora_B.default.weight": b_f,
    }


def comfy_lora_with_alpha(alpha: float, dim: int = DIM, ffn: int = TINY_TRANSFORMER["ffn_dim"]) -> dict:
    """Keys as ComfyUI/Kijai ship LightX2V: `diffusion_model.` prefix, lora_down/up and an alpha."""
    a, b = lora_pair(3, ffn, dim, rank=2 * RANK)
    a_q, b_q = lora_pair(5, dim, dim, rank=2 * RANK)
    return {
        "diffusion_model.blocks.1.ffn.0.lora_down.weight": a, "diffusion_model.blocks.1.ffn.0.lora_up.weight": b,
        "diffusion_model.blocks.1.ffn.0.alpha": torch.tensor(alpha),
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": a_q,
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": b_q,
        "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(alpha),
    }


def diffusers_reference(lora: dict) -> dict:
    """diffusers' own conversion (the PEFT path this engine replaced): official keys go through Comfy names."""
    comfy = {}
    for k, v in lora.items():
        k = k.replace(".default.", ".")
        comfy[k if k.startswith("diffusion_model.") else "diffusion_model." + k] = v.clone()
    return _convert_non_diffusers_wan_lora_to_diffusers(comfy)


def run(model, text_dim: int = TINY_TRANSFORMER["text_dim"]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 36, 2, 4, 4, generator=g)  # (B, C, T, h, w)
    text = torch.randn(1, 8, text_dim, generator=g)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text, return_dict=False)[0]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def merged(deltas: dict, scale: float, seed: int = 0) -> torch.nn.Module:
    """A fresh copy of the model with W += scale * B @ A added by hand."""
    model = build_tiny_transformer(seed)
    with torch.no_grad():
        for module_name, (a, b) in deltas.items():
            model.get_submodule(module_name).weight += scale * (b @ a)
    return model


def test_official_svi_format_matches_a_hand_merged_weight():
    lora = svi_official_lora()
    model = build_tiny_transformer(0)
    base = run(model)
    assert load_lora(model, lora, "svi") == 3
    assert isinstance(model.blocks[0].attn1.to_q, LoraLinear)
    out = run(model)
    deltas = {"blocks.0.attn1.to_q": (lora["blocks.0.self_attn.q.lora_A.default.weight"],
                                      lora["blocks.0.self_attn.q.lora_B.default.weight"]),
              "blocks.1.attn2.to_out.0": (lora["blocks.1.cross_attn.o.lora_A.default.weight"],
                                          lora["blocks.1.cross_attn.o.lora_B.default.weight"]),
              "blocks.0.ffn.net.2": (lora["blocks.0.ffn.2.lora_A.default.weight"],
                                     lora["blocks.0.ffn.2.lora_B.default.weight"])}
    assert not torch.allclose(out, base, atol=1e-3)
    torch.testing.assert_close(out, run(merged(deltas, 1.0)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", ["official", "comfy_alpha", "musubi"])
def test_key_formats_give_the_deltas_diffusers_converters_give(fmt):
    if fmt == "official":
        lora = svi_official_lora()
        reference = diffusers_reference(lora)
    elif fmt == "comfy_alpha":
        lora = comfy_lora_with_alpha(alpha=3.0)
        reference = diffusers_reference(lora)
    else:  # musubi needs every module of every block it names, with an alpha each
        lora = {}
        for i, (wan, ours) in enumerate([("self_attn_q", 0), ("self_attn_k", 0), ("self_attn_v", 0), ("self_attn_o", 0),
                                         ("cross_attn_q", 0), ("cross_attn_k", 0), ("cross_attn_v", 0),
                                         ("cross_attn_o", 0), ("ffn_0", 1), ("ffn_2", 2)]):
            out_dim, in_dim = {0: (DIM, DIM), 1: (32, DIM), 2: (DIM, 32)}[ours]
            a, b = lora_pair(10 + i, out_dim, in_dim)
            lora.update({f"lora_unet_blocks_0_{wan}.lora_down.weight": a, f"lora_unet_blocks_0_{wan}.lora_up.weight": b,
                         f"lora_unet_blocks_0_{wan}.alpha": torch.tensor(2.0)})
        reference = _convert_musubi_wan_lora_to_diffusers({k: v.clone() for k, v in lora.items()})
    ours = parse_lora(lora)
    assert {f"transformer.{m}.lora_A.weight" for m in ours} == {k for k in reference if k.endswith("lora_A.weight")}
    for module, f in ours.items():
        ref_delta = reference[f"transformer.{module}.lora_B.weight"] @ reference[f"transformer.{module}.lora_A.weight"]
        torch.testing.assert_close(f.alpha_scale * (f.up @ f.down), ref_delta, rtol=1e-6, atol=1e-7)


def test_factors_stay_views_of_the_mapped_file(tmp_path):
    path = tmp_path / "svi.safetensors"
    save_file({k: v.contiguous() for k, v in comfy_lora_with_alpha(alpha=4.0).items()}, path)
    mapped = read_lora_file(path)
    f = parse_lora(mapped)["blocks.1.ffn.net.0.proj"]
    assert f.down.data_ptr() == mapped["diffusion_model.blocks.1.ffn.0.lora_down.weight"].data_ptr()
    assert f.alpha_scale == 4.0 / (2 * RANK)
    model = build_tiny_transformer(0)
    load_lora(model, mapped, "lightx2v")
    assert model.blocks[1].ffn.net[0].proj.lora_down is None  # materialized at placement or first use
    run(model)
    assert model.blocks[1].ffn.net[0].proj.lora_down.shape == (2 * RANK, DIM)


def peft_expert(path, config_dir, loras: dict[str, dict]):
    """The reference: the same GGUF expert with diffusers' unfused PEFT adapters."""
    expert = load_expert_gguf(path, config_dir, "transformer", torch.float32)
    for name, lora in loras.items():
        expert.load_lora_adapter(diffusers_reference(lora), prefix="transformer", adapter_name=name)
    return expert


def test_gguf_expert_matches_peft_and_follows_recipe_strengths(tmp_path, caplog):
    path, config_dir, _ = write_tiny_gguf_expert(tmp_path)
    loras = {"svi": svi_official_lora(GDIM, GGUF_TRANSFORMER["ffn_dim"]),
             "lightx2v": comfy_lora_with_alpha(alpha=RANK, dim=GDIM, ffn=GGUF_TRANSFORMER["ffn_dim"])}
    ours = load_expert_gguf(path, config_dir, "transformer", torch.float32)
    ours._svibot_name = "transformer"
    for name, lora in loras.items():
        load_lora(ours, lora, name)
    assert type(ours.blocks[0].attn1.to_q.base_layer).__name__ == "GGUFLinear"
    assert not getattr(ours, "peft_config", None)  # PEFT is not involved
    reference = peft_expert(path, config_dir, loras)
    base = run(load_expert_gguf(path, config_dir, "transformer", torch.float32), GGUF_TRANSFORMER["text_dim"])

    outputs = []
    # SVI's workflow (fast: LightX2V high 0.5), then quality (LightX2V off), then both at 1
    for svi, lightx2v in ((1.0, 0.5), (1.0, 0.0), (1.0, 1.0)):
        reference.set_adapters(["svi", "lightx2v"], [svi, lightx2v])
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="engine.models.lora"):
            set_strengths(SimpleNamespace(transformer=ours, transformer_2=None),
                          LoraStrengths(svi_high=svi, lightx2v_high=lightx2v))
        out, ref = run(ours, GGUF_TRANSFORMER["text_dim"]), run(reference, GGUF_TRANSFORMER["text_dim"])
        assert rel(out, ref) < 1e-5, (svi, lightx2v, rel(out, ref))
        assert rel(out, base) > 1e-3  # the LoRAs do change the output
        outputs.append(out)
    assert "lightx2v 0.5 -> svi 1, lightx2v 1" not in caplog.text
    assert "transformer: LoRA strengths svi 1, lightx2v 0 -> svi 1, lightx2v 1 (weight-side scales, no reload)" in caplog.text
    assert rel(outputs[0], outputs[1]) > 1e-3 and rel(outputs[1], outputs[2]) > 1e-3


def test_gguf_expert_with_lora_matches_the_dequantized_weight_plus_delta(tmp_path):
    path, config_dir, _ = write_tiny_gguf_expert(tmp_path)
    expert = load_expert_gguf(path, config_dir, "transformer", torch.float32)
    lora = svi_official_lora(GDIM, GGUF_TRANSFORMER["ffn_dim"])
    load_lora(expert, lora, "svi")
    set_strengths(SimpleNamespace(transformer=expert, transformer_2=None), LoraStrengths(svi_high=0.75))
    reference = dequantized_reference(path)
    with torch.no_grad():
        for name, key in (("blocks.0.attn1.to_q", "blocks.0.self_attn.q"), ("blocks.1.attn2.to_out.0", "blocks.1.cross_attn.o"),
                          ("blocks.0.ffn.net.2", "blocks.0.ffn.2")):
            a, b = lora[f"{key}.lora_A.default.weight"], lora[f"{key}.lora_B.default.weight"]
            reference.get_submodule(name).weight += 0.75 * (b @ a)
    out, ref = run(expert, GGUF_TRANSFORMER["text_dim"]), run(reference, GGUF_TRANSFORMER["text_dim"])
    assert rel(out, ref) < 1e-4  # diffusers dequantizes K-quants with fp16 arithmetic, gguf-py in fp32


def test_strengths_weight_each_adapter_of_each_expert_separately():
    svi, speed = svi_official_lora(), comfy_lora_with_alpha(alpha=2 * RANK)  # alpha / rank = 1
    experts = SimpleNamespace(transformer=build_tiny_transformer(0), transformer_2=build_tiny_transformer(1))
    for expert in (experts.transformer, experts.transformer_2):
        load_lora(expert, svi, "svi")
        load_lora(expert, speed, "lightx2v")
    svi_deltas = {"blocks.0.attn1.to_q": (svi["blocks.0.self_attn.q.lora_A.default.weight"],
                                          svi["blocks.0.self_attn.q.lora_B.default.weight"]),
                  "blocks.1.attn2.to_out.0": (svi["blocks.1.cross_attn.o.lora_A.default.weight"],
                                              svi["blocks.1.cross_attn.o.lora_B.default.weight"]),
                  "blocks.0.ffn.net.2": (svi["blocks.0.ffn.2.lora_A.default.weight"],
                                         svi["blocks.0.ffn.2.lora_B.default.weight"])}
    speed_deltas = {"blocks.1.ffn.net.0.proj": (speed["diffusion_model.blocks.1.ffn.0.lora_down.weight"],
                                                speed["diffusion_model.blocks.1.ffn.0.lora_up.weight"]),
                    "blocks.0.attn1.to_q": (speed["diffusion_model.blocks.0.self_attn.q.lora_down.weight"],
                                            speed["diffusion_model.blocks.0.self_attn.q.lora_up.weight"])}
    set_strengths(experts, LoraStrengths(svi_high=0.5, lightx2v_high=0.0, svi_low=0.0, lightx2v_low=1.0))
    torch.testing.assert_close(run(experts.transformer), run(merged(svi_deltas, 0.5)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(run(experts.transformer_2), run(merged(speed_deltas, 1.0, seed=1)),
                               rtol=1e-4, atol=1e-5)
    # strength 0 gives back the base model exactly, and the same call turns them on again
    set_strengths(experts, LoraStrengths(svi_high=0.0, svi_low=0.0, lightx2v_high=0.0, lightx2v_low=0.0))
    torch.testing.assert_close(run(experts.transformer), run(build_tiny_transformer(0)), rtol=0, atol=0)
    torch.testing.assert_close(run(experts.transformer_2), run(build_tiny_transformer(1)), rtol=0, atol=0)
    set_strengths(experts, LoraStrengths(svi_high=0.5, lightx2v_high=0.0, svi_low=0.0, lightx2v_low=1.0))
    torch.testing.assert_close(run(experts.transformer), run(merged(svi_deltas, 0.5)), rtol=1e-4, atol=1e-5)


def test_strengths_skip_adapters_an_expert_does_not_have():
    experts = SimpleNamespace(transformer=build_tiny_transformer(0), transformer_2=build_tiny_transformer(1))
    load_lora(experts.transformer, svi_official_lora(), "svi")  # no LightX2V anywhere, nothing on the low expert
    set_strengths(experts, LoraStrengths(svi_high=0.0))
    torch.testing.assert_close(run(experts.transformer), run(build_tiny_transformer(0)), rtol=0, atol=0)
    assert not lora_linears(experts.transformer_2)


def test_strength_zero_is_the_base_model_exactly_and_unnamed_adapters_turn_off():
    model = build_tiny_transformer(0)
    load_lora(model, svi_official_lora(), "svi")
    load_lora(model, comfy_lora_with_alpha(alpha=RANK), "lightx2v")
    set_expert_strengths(model, {"svi": 0.0, "lightx2v": 0.0})
    torch.testing.assert_close(run(model), run(build_tiny_transformer(0)), rtol=0, atol=0)
    set_expert_strengths(model, {"svi": 1.0})  # lightx2v not named: off, as PEFT's set_adapters does
    only_svi = build_tiny_transformer(0)
    load_lora(only_svi, svi_official_lora(), "svi")
    torch.testing.assert_close(run(model), run(only_svi), rtol=1e-5, atol=1e-6)
    q = model.blocks[0].attn1.to_q
    assert q.lora_scale.tolist() == [1.0] * RANK + [0.0] * (2 * RANK)  # svi's ranks first, then lightx2v's
    with pytest.raises(ValueError, match=r"\['other'\] are not loaded on this expert; loaded: \['lightx2v', 'svi'\]"):
        set_expert_strengths(model, {"other": 1.0})


@pytest.mark.parametrize("lora", [
    {"blocks.5.self_attn.q.lora_A.default.weight": torch.zeros(4, 24),  # block 5 does not exist in the model
     "blocks.5.self_attn.q.lora_B.default.weight": torch.zeros(24, 4)},
    {"unet.down_blocks.0.attn.lora_A.weight": torch.zeros(4, 24)},  # not a Wan LoRA at all
    {},
])
def test_lora_that_matches_nothing_raises(lora):
    model = build_tiny_transformer(0)
    with pytest.raises(LoraMismatch):
        load_lora(model, lora, "svi", source="bad.safetensors")
    assert not lora_linears(model)


def test_lora_of_the_wrong_width_names_the_layer():
    model = build_tiny_transformer(0)
    lora = {"blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(4, 48),
            "blocks.0.self_attn.q.lora_B.default.weight": torch.zeros(48, 4)}
    with pytest.raises(LoraMismatch, match=r"bad.safetensors: blocks.0.attn1.to_q is 24x24 in the model but .* 48x48"):
        load_lora(model, lora, "svi", source="bad.safetensors")
    assert not lora_linears(model)
