"""Helpers for the engine tests: test photos and a story run that records what the experts saw."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf.quants import dequantize
from PIL import Image

from tests.support.gguf_writer import diffusers_to_wan_keys, write_wan_gguf
from engine.models.tiny import TINY_TRANSFORMER, build_tiny_transformer

PROMPTS = ["a man walks", "a man runs", "a man flies up"]


def make_photo(width: int = 300, height: int = 200, fmt: str = "PNG", mode: str = "RGB", seed: int = 0) -> bytes:
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1)
    noisy = np.clip(base + rs.randint(-20, 20, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(noisy, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@dataclass
class Recording:
    """What one story run saw: every expert call's input and timestep, progress and segment callbacks."""

    calls: list = field(default_factory=list)  # (segment, expert name, timestep, model input)
    progress: list = field(default_factory=list)
    segments: list = field(default_factory=list)
    results: list = field(default_factory=list)


def record_story(models, photo, prompts, settings, **kwargs) -> Recording:
    from engine.svi import generate_story

    rec = Recording()
    current = {"segment": kwargs.get("start_segment", 0)}

    def hook(name):
        def pre(module, args, kw):
            rec.calls.append((current["segment"], name, float(kw["timestep"][0]), kw["hidden_states"].clone()))
        return pre

    def on_segment(result):
        rec.segments.append(result.index)
        current["segment"] = result.index + 1

    handles = [models.transformer.register_forward_pre_hook(hook("high"), with_kwargs=True),
               models.transformer_2.register_forward_pre_hook(hook("low"), with_kwargs=True)]
    try:
        rec.results = generate_story(models, photo, prompts, settings, on_progress=rec.progress.append,
                                     on_segment=on_segment, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return rec


# Widths of 256 so every block linear can hold K-quant super-blocks of 256 values.
GGUF_TRANSFORMER = dict(TINY_TRANSFORMER, num_attention_heads=2, attention_head_dim=128, ffn_dim=256, text_dim=256)


def qtype_for(name: str, shape: tuple) -> Q:
    """A Q4_K_M-like mix: Q4_K attention, Q6_K feed-forward, Q8_0 cross-attention, F16/F32 for the rest."""
    if len(shape) == 2 and shape[-1] % 256 == 0 and name.startswith("blocks."):
        if ".ffn." in name:
            return Q.Q6_K
        return Q.Q4_K if ".self_attn." in name else Q.Q8_0
    return Q.F16 if len(shape) >= 2 else Q.F32


def write_tiny_gguf_expert(root: Path):
    """A tiny Wan-2.2-shaped expert as GGUF with Wan key names: (gguf path, config dir, source model)."""
    source = build_tiny_transformer(7, **GGUF_TRANSFORMER)
    path = write_wan_gguf(root / "expert.gguf", diffusers_to_wan_keys(source.state_dict()), qtype_for)
    config = {"_class_name": "WanTransformer3DModel",
              **{k: list(v) if isinstance(v, tuple) else v for k, v in GGUF_TRANSFORMER.items()}}
    (root / "configs" / "transformer").mkdir(parents=True)
    (root / "configs" / "transformer" / "config.json").write_text(json.dumps(config))
    return path, root / "configs", source


def dequantized_reference(path) -> torch.nn.Module:
    """The same architecture holding exactly the values the GGUF file decodes to."""
    reader = GGUFReader(str(path))
    wan = {}
    for t in reader.tensors:
        shape = tuple(int(s) for s in reversed(t.shape))
        wan[t.name] = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), np.float32).reshape(shape))
    model = build_tiny_transformer(0, **GGUF_TRANSFORMER)
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    model.load_state_dict(convert_wan_transformer_to_diffusers(wan))
    return model
