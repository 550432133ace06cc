"""LoRAs load unfused as named adapters and change the output by exactly B @ A * scale * strength."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.config import LoraStrengths
from engine.errors import LoraMismatch
from engine.models.loading import load_expert_gguf
from engine.models.lora import load_lora, set_strengths, to_comfy_format
from engine.models.tiny import TINY_TRANSFORMER, build_tiny_transformer
from tests.support.engine_helpers import GGUF_TRANSFORMER, dequantized_reference, write_tiny_gguf_expert

RANK = 4
DIM = TINY_TRANSFORMER["num_attention_heads"] * TINY_TRANSFORMER["attention_head_dim"]


def lora_pair(seed: int, out_dim: int = DIM, in_dim: int = DIM) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(RANK, in_dim, generator=g) * 0.3, torch.randn(out_dim, RANK, generator=g) * 0.3  # A, B


def svi_official_lora(dim: int = DIM) -> dict:
    """Keys as SVI 2.0 Pro ships them: PEFT names with `.default`, no prefix."""
    a_q, b_q = lora_pair(1, dim, dim)
    a_o, b_o = lora_pair(2, dim, dim)
    return {
        "blocks.0.self_attn.q.lora_A.default.weight": a_q, "blocks.0.self_attn.q.lora_B.default.weight": b_q,
        "blocks.1.cross_attn.o.lora_A.default.weight": a_o, "blocks.1.cross_attn.o.lora_B.default.weight": b_o,
    }


def comfy_lora_with_alpha(alpha: float) -> dict:
    """Keys as ComfyUI/Kijai ship them: `diffusion_model.` prefix, lora_down/up and an alpha."""
    a, b = lora_pair(3, TINY_TRANSFORMER["ffn_dim"], DIM)
    return {
        "diffusion_model.blocks.1.ffn.0.lora_down.weight": a,
        "diffusion_model.blocks.1.ffn.0.lora_up.weight": b,
        "diffusion_model.blocks.1.ffn.0.alpha": torch.tensor(alpha),
    }


def run(model, text_dim: int = TINY_TRANSFORMER["text_dim"]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 36, 2, 4, 4, generator=g)  # (B, C, T, h, w)
    text = torch.randn(1, 8, text_dim, generator=g)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text, return_dict=False)[0]


def merged(deltas: dict, scale: float, seed: int = 0, **config) -> torch.nn.Module:
    """The reference: a fresh copy of the model with W += scale * B @ A added by hand."""
    model = build_tiny_transformer(seed, **config)
    with torch.no_grad():
        for module_name, (a, b) in deltas.items():
            model.get_submodule(module_name).weight += scale * (b @ a)
    return model


def test_official_svi_format_matches_a_hand_merged_weight():
    lora = svi_official_lora()
    model = build_tiny_transformer(0)
    base = run(model)
    assert load_lora(model, lora, "svi") == 2
    out = run(model)
    deltas = {"blocks.0.attn1.to_q": (lora["blocks.0.self_attn.q.lora_A.default.weight"],
                                      lora["blocks.0.self_attn.q.lora_B.default.weight"]),
              "blocks.1.attn2.to_out.0": (lora["blocks.1.cross_attn.o.lora_A.default.weight"],
                                          lora["blocks.1.cross_attn.o.lora_B.default.weight"])}
    assert not torch.allclose(out, base, atol=1e-3)
    torch.testing.assert_close(out, run(merged(deltas, 1.0)), rtol=1e-4, atol=1e-5)


def test_comfy_format_alpha_scales_the_delta():
    lora = comfy_lora_with_alpha(alpha=2.0)  # alpha / rank = 0.5
    model = build_tiny_transformer(0)
    load_lora(model, lora, "lightx2v")
    deltas = {"blocks.1.ffn.net.0.proj": (lora["diffusion_model.blocks.1.ffn.0.lora_down.weight"],
                                          lora["diffusion_model.blocks.1.ffn.0.lora_up.weight"])}
    torch.testing.assert_close(run(model), run(merged(deltas, 2.0 / RANK)), rtol=1e-4, atol=1e-5)


def test_strengths_weight_each_adapter_of_each_expert_separately():
    svi, speed = svi_official_lora(), comfy_lora_with_alpha(alpha=RANK)  # alpha / rank = 1
    experts = SimpleNamespace(transformer=build_tiny_transformer(0), transformer_2=build_tiny_transformer(1))
    for expert in (experts.transformer, experts.transformer_2):
        load_lora(expert, svi, "svi")
        load_lora(expert, speed, "lightx2v")
    svi_deltas = {"blocks.0.attn1.to_q": (svi["blocks.0.self_attn.q.lora_A.default.weight"],
                                          svi["blocks.0.self_attn.q.lora_B.default.weight"]),
                  "blocks.1.attn2.to_out.0": (svi["blocks.1.cross_attn.o.lora_A.default.weight"],
                                              svi["blocks.1.cross_attn.o.lora_B.default.weight"])}
    speed_deltas = {"blocks.1.ffn.net.0.proj": (speed["diffusion_model.blocks.1.ffn.0.lora_down.weight"],
                                                speed["diffusion_model.blocks.1.ffn.0.lora_up.weight"])}
    set_strengths(experts, LoraStrengths(svi_high=0.5, lightx2v_high=0.0, svi_low=0.0, lightx2v_low=1.0))
    torch.testing.assert_close(run(experts.transformer), run(merged(svi_deltas, 0.5)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(run(experts.transformer_2), run(merged(speed_deltas, 1.0, seed=1)),
                               rtol=1e-4, atol=1e-5)
    # unfused: strength 0 gives back the base model exactly, and the same call turns them on again
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
    assert not getattr(experts.transformer_2, "peft_config", None)


def test_official_keys_become_comfy_keys():
    converted = to_comfy_format({"blocks.31.self_attn.k.lora_B.default.weight": torch.zeros(1)})
    assert list(converted) == ["diffusion_model.blocks.31.self_attn.k.lora_B.weight"]


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
    assert not getattr(model, "peft_config", None)


def test_lora_on_a_gguf_expert_changes_the_output_by_the_merged_delta(tmp_path):
    path, config_dir, _ = write_tiny_gguf_expert(tmp_path)
    expert = load_expert_gguf(path, config_dir, "transformer", torch.float32)
    dim = GGUF_TRANSFORMER["num_attention_heads"] * GGUF_TRANSFORMER["attention_head_dim"]
    lora = svi_official_lora(dim)
    load_lora(expert, lora, "svi")
    set_strengths(SimpleNamespace(transformer=expert, transformer_2=None), LoraStrengths(svi_high=0.75))
    reference = dequantized_reference(path)
    with torch.no_grad():
        for name, key in (("blocks.0.attn1.to_q", "blocks.0.self_attn.q"), ("blocks.1.attn2.to_out.0", "blocks.1.cross_attn.o")):
            a, b = lora[f"{key}.lora_A.default.weight"], lora[f"{key}.lora_B.default.weight"]
            reference.get_submodule(name).weight += 0.75 * (b @ a)
    out, ref = run(expert, GGUF_TRANSFORMER["text_dim"]), run(reference, GGUF_TRANSFORMER["text_dim"])
    assert ((out - ref).norm() / ref.norm()).item() < 1e-4
