"""Helpers for the engine tests: test photos and a story run that records what the experts saw."""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

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
