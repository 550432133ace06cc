"""GGUF: the K-quant encoders, Wan key names, and loading through the same loader the real presets use."""
from __future__ import annotations

import json
import numpy as np
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf.quants import dequantize

from tests.support.gguf_writer import ENCODERS, diffusers_to_wan_keys, quantize
from engine.models.loading import load_expert_gguf
from engine.models.presets import wan22_config_dir
from engine.models.tiny import build_tiny_transformer
from tests.support.engine_helpers import GGUF_TRANSFORMER, dequantized_reference, write_tiny_gguf_expert

# Worst-case relative RMS error of each format on Gaussian data (a 4-bit grid over ~4 sigma is ~8%).
RMS_TOLERANCE = {Q.Q4_K: 0.10, Q.Q6_K: 0.03, Q.Q8_0: 0.01}


@pytest.mark.parametrize("qtype", sorted(ENCODERS, key=lambda q: q.name))
def test_encoders_round_trip_through_gguf_dequantize(qtype):
    x = np.random.RandomState(0).randn(32, 512).astype(np.float32)
    encoded = quantize(x, qtype)
    decoded = dequantize(encoded, qtype)
    assert decoded.shape == x.shape
    rel_rms = np.sqrt(np.mean((decoded - x) ** 2)) / x.std()
    assert rel_rms < RMS_TOLERANCE[qtype]
    # a decoded tensor is (almost) a fixed point: re-encoding it must not drift
    again = dequantize(quantize(decoded, qtype), qtype)
    assert np.sqrt(np.mean((again - decoded) ** 2)) / x.std() < RMS_TOLERANCE[qtype] / 2


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K])
def test_k_quant_encoders_keep_zeros_and_constant_blocks(qtype):
    x = np.zeros((2, 256), np.float32)
    x[1] = -0.75
    decoded = dequantize(quantize(x, qtype), qtype)
    assert np.array_equal(decoded[0], x[0])
    assert np.allclose(decoded[1], -0.75, atol=0.01)


def test_quantize_rejects_rows_that_do_not_fill_blocks():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize(np.zeros((4, 100), np.float32), Q.Q4_K)


def test_wan_key_names_round_trip_through_the_diffusers_converter():
    sd = build_tiny_transformer(0).state_dict()
    wan = diffusers_to_wan_keys(sd)
    for key in ("blocks.0.self_attn.q.weight", "blocks.1.cross_attn.o.bias", "blocks.0.norm3.weight",
                "blocks.0.ffn.0.weight", "blocks.0.modulation", "patch_embedding.weight", "text_embedding.0.weight",
                "time_embedding.0.weight", "time_projection.1.weight", "head.head.weight", "head.modulation"):
        assert key in wan
    back = convert_wan_transformer_to_diffusers(dict(wan))
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.fixture(scope="module")
def gguf_expert(tmp_path_factory):
    return write_tiny_gguf_expert(tmp_path_factory.mktemp("gguf"))


def test_file_holds_f16_q8_0_q4_k_and_q6_k_under_wan_names(gguf_expert):
    path, _, _ = gguf_expert
    types = {t.name: t.tensor_type for t in GGUFReader(str(path)).tensors}
    assert types["blocks.0.self_attn.q.weight"] == Q.Q4_K
    assert types["blocks.0.ffn.0.weight"] == Q.Q6_K
    assert types["blocks.1.cross_attn.k.weight"] == Q.Q8_0
    assert types["patch_embedding.weight"] == Q.F16
    assert types["head.head.weight"] == Q.F16


def inputs(text_dim: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 36, 3, 8, 8, generator=g)  # (B, C, T, h, w)
    text = torch.randn(1, 16, text_dim, generator=g)
    return x, torch.tensor([937.5]), text


def test_gguf_expert_matches_its_dequantized_reference(gguf_expert):
    path, config_dir, source = gguf_expert
    loaded = load_expert_gguf(path, config_dir, "transformer", torch.float32)
    assert type(loaded.blocks[0].attn1.to_q).__name__ == "GGUFLinear"  # stays quantized, dequantized per call
    reference = dequantized_reference(path)
    x, t, text = inputs(GGUF_TRANSFORMER["text_dim"])
    with torch.no_grad():
        out = loaded(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        ref = reference(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        src = source(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    # Same decoded weights in fp32; diffusers' torch dequantizer rounds d*scale in another order than
    # gguf-py's numpy one, which leaves differences of a few 1e-5 after the attention softmaxes.
    print("gguf vs reference", ((out - ref).norm() / ref.norm()).item(), (out - ref).abs().max().item())
    assert ((out - ref).norm() / ref.norm()).item() < 1e-4
    assert (out - ref).abs().max().item() < 1e-3
    # and quantization moved the output, but not far from the unquantized source
    rel = ((out - src).norm() / src.norm()).item()
    assert 0 < rel < 0.1


def test_packaged_configs_describe_wan22_i2v_a14b():
    for sub in ("transformer", "transformer_2"):
        cfg = json.loads((wan22_config_dir() / sub / "config.json").read_text())
        assert cfg["in_channels"] == 36 and cfg["out_channels"] == 16
        assert cfg["image_dim"] is None and cfg["added_kv_proj_dim"] is None  # no CLIP in 2.2 I2V
        assert cfg["num_layers"] == 40 and cfg["num_attention_heads"] * cfg["attention_head_dim"] == 5120
        assert cfg["ffn_dim"] == 13824 and cfg["text_dim"] == 4096
        assert cfg["qk_norm"] == "rms_norm_across_heads" and cfg["cross_attn_norm"] is True
    vae = json.loads((wan22_config_dir() / "vae" / "config.json").read_text())
    assert vae["z_dim"] == 16 and len(vae["latents_mean"]) == len(vae["latents_std"]) == 16
