"""Write Wan 2.2 I2V experts with random weights as GGUF files laid out like a real Q4_K_M or Q3_K_M file.

One block's worth of quantized bytes is made once and reused for every block, so writing two
full-size 7-9 GB experts is bound by the disk, not by quantization.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

QK_K = 256  # super-block length of the K-quants


def q4_k_bytes(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Valid Q4_K blocks: d, dmin (fp16), 12 bytes of 6-bit scales/mins, 128 bytes of 4-bit quants."""
    nblocks = rows * cols // QK_K
    raw = rng.integers(0, 256, size=(nblocks, 144), dtype=np.uint8)
    # weight = d * sc * q - dmin * m with sc, m in [0, 63] and q in [0, 15]; dmin ~ 7.5 d centres
    # it near zero, and d = 1e-4 gives a spread of about 0.02, like trained Wan linears.
    raw[:, 0:2] = np.frombuffer(np.float16(1e-4).tobytes(), dtype=np.uint8)
    raw[:, 2:4] = np.frombuffer(np.float16(7.5e-4).tobytes(), dtype=np.uint8)
    return raw.reshape(rows, cols // QK_K * 144)


def q6_k_bytes(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Valid Q6_K blocks: 128 bytes low bits, 64 high bits, 16 int8 scales, fp16 d (weight = d*sc*(q-32))."""
    nblocks = rows * cols // QK_K
    raw = rng.integers(0, 256, size=(nblocks, 210), dtype=np.uint8)
    raw[:, 208:210] = np.frombuffer(np.float16(1.5e-5).tobytes(), dtype=np.uint8)
    return raw.reshape(rows, cols // QK_K * 210)


def q3_k_bytes(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Valid Q3_K blocks: 32 bytes high bits, 64 bytes low 2 bits, 12 bytes of 6-bit scales, fp16 d.

    weight = d * (sc - 32) * q with q in [-4, 3]: d = 2e-4 gives a spread of about 0.02.
    """
    nblocks = rows * cols // QK_K
    raw = rng.integers(0, 256, size=(nblocks, 110), dtype=np.uint8)
    raw[:, 108:110] = np.frombuffer(np.float16(2e-4).tobytes(), dtype=np.uint8)
    return raw.reshape(rows, cols // QK_K * 110)


# Per-linear quantization of each layout. Q4_K_M as in QuantStack's files: attention values and the
# FFN output in Q6_K, other linears Q4_K. Q3_K_M (listed at 7.18 GB): attention q/k/o in Q3_K, the
# values and the FFN in Q4_K, which lands at 7.2 GB; the exact mix of the published file may differ.
LAYOUTS = {
    "q4_k_m": {"q": "Q4_K", "k": "Q4_K", "v": "Q6_K", "o": "Q4_K", "ffn.0": "Q4_K", "ffn.2": "Q6_K"},
    "q3_k_m": {"q": "Q3_K", "k": "Q3_K", "v": "Q4_K", "o": "Q3_K", "ffn.0": "Q4_K", "ffn.2": "Q4_K"},
}


def wan_tensors(cfg: dict, rng: np.random.Generator, layout: str = "q4_k_m"):
    """(name, array, qtype name) for one expert in original Wan key names; blocks share their bytes."""
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    ffn, text_dim, freq = cfg["ffn_dim"], cfg["text_dim"], cfg["freq_dim"]
    out_ch, in_ch = cfg["out_channels"], cfg["in_channels"]
    p = cfg["patch_size"]
    f32 = lambda *shape: (rng.standard_normal(shape, dtype=np.float32) * 0.02)
    ones = lambda n: np.ones(n, dtype=np.float32)
    q4 = lambda r, c: (q4_k_bytes(r, c, rng), "Q4_K")
    makers = {"Q3_K": q3_k_bytes, "Q4_K": q4_k_bytes, "Q6_K": q6_k_bytes}
    types = LAYOUTS[layout]
    quant = lambda kind, r, c: (makers[types[kind]](r, c, rng), types[kind])

    # Norms, biases and modulation in F32, the 5-D patch embedding in F16, as in the published files.
    block = {}
    for attn in ("self_attn", "cross_attn"):
        for proj in ("q", "k", "v", "o"):
            block[f"{attn}.{proj}.weight"] = quant(proj, dim, dim)
            block[f"{attn}.{proj}.bias"] = (f32(dim), "F32")
        block[f"{attn}.norm_q.weight"] = (ones(dim), "F32")
        block[f"{attn}.norm_k.weight"] = (ones(dim), "F32")
    block["norm3.weight"] = (ones(dim), "F32")
    block["norm3.bias"] = (np.zeros(dim, dtype=np.float32), "F32")
    block["ffn.0.weight"] = quant("ffn.0", ffn, dim)
    block["ffn.0.bias"] = (f32(ffn), "F32")
    block["ffn.2.weight"] = quant("ffn.2", dim, ffn)
    block["ffn.2.bias"] = (f32(dim), "F32")
    block["modulation"] = (f32(1, 6, dim), "F32")

    yield "patch_embedding.weight", f32(dim, in_ch, *p).astype(np.float16), "F16"
    yield "patch_embedding.bias", f32(dim), "F32"
    yield "text_embedding.0.weight", *q4(dim, text_dim)
    yield "text_embedding.0.bias", f32(dim), "F32"
    yield "text_embedding.2.weight", *q4(dim, dim)
    yield "text_embedding.2.bias", f32(dim), "F32"
    yield "time_embedding.0.weight", *q4(dim, freq)
    yield "time_embedding.0.bias", f32(dim), "F32"
    yield "time_embedding.2.weight", *q4(dim, dim)
    yield "time_embedding.2.bias", f32(dim), "F32"
    yield "time_projection.1.weight", *q4(6 * dim, dim)
    yield "time_projection.1.bias", f32(6 * dim), "F32"
    for i in range(cfg["num_layers"]):
        for key, (arr, qtype) in block.items():
            yield f"blocks.{i}.{key}", arr, qtype
    yield "head.head.weight", f32(out_ch * int(np.prod(p)), dim), "F32"
    yield "head.head.bias", f32(out_ch * int(np.prod(p))), "F32"
    yield "head.modulation", f32(1, 2, dim), "F32"


def write_random_expert(path: Path, cfg: dict, seed: int, layout: str = "q4_k_m") -> int:
    """Write one expert; returns the file size in bytes."""
    import gguf

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch="wan")
    rng = np.random.default_rng(seed)
    for name, arr, qtype in wan_tensors(cfg, rng, layout):
        raw_dtype = getattr(gguf.GGMLQuantizationType, qtype)
        if qtype.startswith("Q"):
            writer.add_tensor(name, arr, raw_dtype=raw_dtype)
        else:
            writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path).stat().st_size
