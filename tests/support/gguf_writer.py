"""Write Wan transformers to GGUF with original Wan key names, including K-quant encoders.

gguf-py can dequantize Q4_K and Q6_K but not quantize them, so the encoders live here: one pure,
vectorised numpy function per format (no per-block Python loops), chosen through `ENCODERS`.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf import quants as gguf_quants

QK_K = 256  # values per K-quant super-block


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den == 0, 0.0, num / np.where(den == 0, 1.0, den))


def quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    """(n, 256) float32 -> (n, 144) uint8 blocks: d, dmin (f16), 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.

    Each 32-value sub-block j decodes as d*sc[j]*q - dmin*m[j] with q in 0..15.
    """
    n = blocks.shape[0]
    sub = blocks.reshape(n, 8, 32)  # (n, 8 sub-blocks, 32)
    lo = np.minimum(sub.min(axis=-1), 0.0)  # mins are stored as a non-negative offset
    hi = sub.max(axis=-1)
    sub_scale = (hi - lo) / 15.0  # (n, 8)
    sub_min = -lo  # (n, 8)
    d = _f16(sub_scale.max(axis=-1, keepdims=True) / 63.0)  # (n, 1)
    dmin = _f16(sub_min.max(axis=-1, keepdims=True) / 63.0)
    sc = np.clip(np.rint(_safe_div(sub_scale, d)), 0, 63).astype(np.uint8)  # (n, 8)
    mn = np.clip(np.rint(_safe_div(sub_min, dmin)), 0, 63).astype(np.uint8)
    eff_scale = (d * sc)[..., None]  # (n, 8, 1)
    eff_min = (dmin * mn)[..., None]
    q = np.clip(np.rint(_safe_div(sub + eff_min, eff_scale)), 0, 15).astype(np.uint8)  # (n, 8, 32)

    scales = np.empty((n, 12), dtype=np.uint8)
    scales[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    q = q.reshape(n, 4, 2, 32)  # sub-blocks 2c and 2c+1 share the bytes of chunk c
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, 128)
    header = np.concatenate([d, dmin], axis=1).astype(np.float16).view(np.uint8)  # (n, 4)
    return np.concatenate([header, scales, qs], axis=1)


def quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    """(n, 256) float32 -> (n, 210) uint8 blocks: 128 bytes low nibbles, 64 bytes high 2 bits, 16 int8 scales, d (f16).

    Each 16-value sub-block j decodes as d*scale[j]*(q - 32) with q in 0..63.
    """
    n = blocks.shape[0]
    sub = blocks.reshape(n, 16, 16)  # (n, 16 sub-blocks, 16)
    sub_scale = np.abs(sub).max(axis=-1) / 31.0  # (n, 16)
    d = _f16(sub_scale.max(axis=-1, keepdims=True) / 127.0)  # (n, 1)
    sc = np.clip(np.rint(_safe_div(sub_scale, d)), -128, 127).astype(np.int8)  # (n, 16)
    eff = (d * sc.astype(np.float32))[..., None]  # (n, 16, 1)
    q = (np.clip(np.rint(_safe_div(sub, eff)), -32, 31) + 32).astype(np.uint8).reshape(n, QK_K)

    low = (q & 0x0F).reshape(n, 2, 2, 64)  # (n, half, nibble, 64)
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    high = (q >> 4).reshape(n, 2, 4, 32)  # (n, half, shift, 32)
    qh = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)).reshape(n, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), d.astype(np.float16).view(np.uint8)], axis=1)


def quantize_with_gguf(qtype: GGMLQuantizationType) -> Callable[[np.ndarray], np.ndarray]:
    """gguf-py's own quantizer for the formats it supports, at block granularity."""
    block_size, _ = GGML_QUANT_SIZES[qtype]
    return lambda blocks: gguf_quants.quantize(blocks.reshape(-1, block_size), qtype)


ENCODERS: dict[GGMLQuantizationType, Callable[[np.ndarray], np.ndarray]] = {
    GGMLQuantizationType.Q4_K: quantize_q4_k,
    GGMLQuantizationType.Q6_K: quantize_q6_k,
    GGMLQuantizationType.Q8_0: quantize_with_gguf(GGMLQuantizationType.Q8_0),
}


def quantize(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Quantize a float array row-wise to GGUF bytes: shape (..., row_bytes) uint8, or F16/F32 values."""
    data = np.asarray(data, dtype=np.float32)
    if qtype == GGMLQuantizationType.F32:
        return data
    if qtype == GGMLQuantizationType.F16:
        return data.astype(np.float16)
    if qtype not in ENCODERS:
        raise ValueError(f"no encoder for {qtype.name}; supported: F32, F16, {', '.join(q.name for q in ENCODERS)}")
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if data.shape[-1] % block_size:
        raise ValueError(f"{qtype.name} needs rows that are a multiple of {block_size} values, got shape {data.shape}")
    blocks = data.reshape(-1, block_size)  # (n_blocks, block_size)
    out = ENCODERS[qtype](blocks)  # (n_blocks, type_size)
    assert out.shape == (blocks.shape[0], type_size), (out.shape, type_size)
    return out.reshape(*data.shape[:-1], data.shape[-1] // block_size * type_size)


# diffusers name -> Wan name; the inverse of diffusers' convert_wan_transformer_to_diffusers.
_WAN_RENAMES = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".ffn.net.0.proj.", ".ffn.0."),
    (".ffn.net.2.", ".ffn.2."),
    ("proj_out.", "head.head."),
]


def diffusers_to_wan_key(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    for old, new in _WAN_RENAMES:
        key = key.replace(old, new)
    key = re.sub(r"^(blocks\.\d+\.)scale_shift_table$", r"\1modulation", key)
    # Wan's norm3 is the cross-attention norm, which diffusers calls norm2 (and vice versa).
    return re.sub(r"^(blocks\.\d+\.)norm([23])\.", lambda m: f"{m[1]}norm{5 - int(m[2])}.", key)


def diffusers_to_wan_keys(state_dict: Mapping) -> dict:
    """Rename a diffusers `WanTransformer3DModel` state dict to the original Wan key names."""
    return {diffusers_to_wan_key(k): v for k, v in state_dict.items()}


def write_wan_gguf(path: Path, wan_state_dict: Mapping,
                   qtype_for: Callable[[str, tuple], GGMLQuantizationType]) -> Path:
    """Write a Wan-named state dict to GGUF, quantizing each tensor to `qtype_for(name, shape)`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), arch="wan")
    for name, tensor in wan_state_dict.items():
        data = tensor.detach().float().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor, np.float32)
        qtype = qtype_for(name, tuple(data.shape))
        encoded = quantize(data, qtype)
        if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            writer.add_tensor(name, encoded)
        else:
            writer.add_tensor(name, encoded, raw_shape=encoded.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
