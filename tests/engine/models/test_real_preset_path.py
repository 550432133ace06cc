"""The real-preset path end to end with tiny files: fake Hub -> download -> GGUF experts, VAE, UMT5,
tokenizer and both LoRAs per expert through `load_models` -> one SVI segment."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.torch import save_file

from engine.models.config import EngineConfig
from engine.models.download import download_preset
from tests.support.gguf_writer import diffusers_to_wan_keys, write_wan_gguf
from engine.models.loading import load_models, unload_models
from engine.models.lora import adapter_names
from engine.models.presets import PRESETS, ModelFiles, Preset
from engine.svi import generate_story
from engine.worker import resolve_settings
from engine.models.tiny import TINY_TRANSFORMER, TINY_VAE, build_tiny_components
from tests.support.engine_helpers import make_photo
from tests.support.fake_hub import FakeHub

REPO = "org/tiny-wan"
DIM = TINY_TRANSFORMER["num_attention_heads"] * TINY_TRANSFORMER["attention_head_dim"]


def lora(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"blocks.0.self_attn.q.lora_A.default.weight": torch.randn(4, DIM, generator=g).contiguous(),
            "blocks.0.self_attn.q.lora_B.default.weight": torch.randn(DIM, 4, generator=g).contiguous()}


def qtype_for(name: str, shape: tuple) -> Q:
    """Q8_0 where a row holds whole 32-value blocks (ffn.2, text embedding), F16/F32 elsewhere."""
    if len(shape) == 2 and shape[-1] % 32 == 0:
        return Q.Q8_0
    return Q.F16 if len(shape) >= 2 else Q.F32


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> tuple[dict, dict]:
    """Every file of a preset, but tiny: (repo contents for the fake Hub, packaged-style config dir)."""
    root = tmp_path_factory.mktemp("repo")
    parts = build_tiny_components()
    files: dict[str, bytes] = {}
    for name, subdir in (("transformer", "HighNoise/high.gguf"), ("transformer_2", "LowNoise/low.gguf")):
        wan = diffusers_to_wan_keys(parts[name].state_dict())
        path = write_wan_gguf(root / subdir, wan, qtype_for)
        files[subdir] = path.read_bytes()
    save_file({k: v.contiguous() for k, v in parts["vae"].state_dict().items()}, root / "vae.safetensors")
    files["vae.safetensors"] = (root / "vae.safetensors").read_bytes()
    parts["text_encoder"].save_pretrained(root / "text_encoder")
    parts["tokenizer"].save_pretrained(root / "tokenizer")
    for folder in ("text_encoder", "tokenizer"):
        for f in (root / folder).iterdir():
            files[f"{folder}/{f.name}"] = f.read_bytes()
    for i, name in enumerate(("svi_high", "svi_low", "l_high", "l_low")):
        save_file(lora(i), root / f"{name}.safetensors")
        files[f"{name}.safetensors"] = (root / f"{name}.safetensors").read_bytes()
    configs = root / "configs"
    for sub in ("transformer", "transformer_2"):
        (configs / sub).mkdir(parents=True)
        cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_TRANSFORMER.items()}
        (configs / sub / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel", **cfg}))
    (configs / "vae").mkdir()
    (configs / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", **TINY_VAE}))
    return {REPO: files}, configs


def tiny_repo_files() -> ModelFiles:
    """Every part of a preset, named as `tiny_repo` writes them into the fake Hub's repo."""
    r = REPO
    return ModelFiles(high_repo=r, high_file="HighNoise/high.gguf", low_repo=r, low_file="LowNoise/low.gguf",
                      vae_repo=r, vae_file="vae.safetensors", text_encoder_repo=r, tokenizer_repo=r,
                      svi_high_repo=r, svi_high_file="svi_high.safetensors",
                      svi_low_repo=r, svi_low_file="svi_low.safetensors",
                      lightx2v_high_repo=r, lightx2v_high_file="l_high.safetensors",
                      lightx2v_low_repo=r, lightx2v_low_file="l_low.safetensors")


def test_download_then_load_then_generate(tiny_repo, tmp_path, monkeypatch):
    repos, configs = tiny_repo
    files = tiny_repo_files()
    preset = Preset(name="tiny_gguf", files=files, sizes={}, settings=replace(PRESETS["tiny"].settings, num_frames=9),
                    config_dir=configs)
    monkeypatch.setitem(PRESETS, "tiny_gguf", preset)
    with FakeHub(repos) as hub:
        download_preset("tiny_gguf", tmp_path, endpoint=hub.endpoint, progress=False, token=None)
    try:
        models = load_models(EngineConfig(preset="tiny_gguf", models_dir=tmp_path, device="cpu"))
        assert type(models.transformer.blocks[0].ffn.net[2]).__name__ == "GGUFLinear"
        assert type(models.transformer_2.condition_embedder.text_embedder.linear_1).__name__ == "GGUFLinear"
        assert adapter_names(models.transformer) == adapter_names(models.transformer_2) == ["svi", "lightx2v"]
        q = models.transformer.blocks[0].attn1.to_q  # weight side, ranks 4 + 4
        assert adapter_weights(models.transformer) == {"svi": 1.0, "lightx2v": 0.5}  # the fast recipe's
        assert models.adapters == {"svi", "lightx2v"}
        assert adapter_weights(models.transformer_2) == {"svi": 1.0, "lightx2v": 1.0}
        assert q.lora_down is None  # still views of the mapped files until placement
        results = generate_story(models, make_photo(), ["walk", "run"], preset.settings)
        assert q.lora_scale.tolist() == [1.0] * 4 + [0.5] * 4
        assert models.transformer_2.blocks[0].attn1.to_q.lora_scale.tolist() == [1.0] * 8
        assert [len(r.frames) for r in results] == [9, 4]
    finally:
        unload_models()


def adapter_weights(expert) -> dict:
    """The weight each adapter has on the layer the tiny LoRAs target (blocks.0 self-attention q)."""
    return {a.name: a.strength for a in expert.blocks[0].attn1.to_q.adapters}


def test_each_job_runs_its_recipe_strengths(tiny_repo, tmp_path, monkeypatch):
    """A `quality` job runs with LightX2V at 0 on both experts, the next `fast` job with 0.5 / 1.0, and the
    next `quality` job gives the first one's frames again: strengths switch per job, without a reload."""
    repos, configs = tiny_repo
    preset = Preset(name="tiny_gguf", files=tiny_repo_files(), sizes={},
                    settings=replace(PRESETS["tiny"].settings, num_frames=5), config_dir=configs)
    monkeypatch.setitem(PRESETS, "tiny_gguf", preset)
    with FakeHub(repos) as hub:
        download_preset("tiny_gguf", tmp_path, endpoint=hub.endpoint, progress=False, token=None)
    config = EngineConfig(preset="tiny_gguf", models_dir=tmp_path, device="cpu")
    photo = make_photo()
    try:
        models = load_models(config)
        seen = []  # (expert, adapter weights) at every transformer call
        for name in ("transformer", "transformer_2"):
            expert = getattr(models, name)
            expert.register_forward_pre_hook(lambda m, a, name=name: seen.append((name, adapter_weights(m))))

        def run(job_settings: dict):
            seen.clear()
            _, settings = resolve_settings({"preset": "tiny_gguf", **job_settings}, config)
            frames = generate_story(models, photo, ["walk"], settings)[0].frames
            return frames, {(name, tuple(sorted(w.items()))) for name, w in seen}, len(seen)

        quality, quality_weights, quality_calls = run({"quality": "quality"})
        assert quality_weights == {("transformer", (("lightx2v", 0.0), ("svi", 1.0))),
                                   ("transformer_2", (("lightx2v", 0.0), ("svi", 1.0)))}
        assert quality_calls == 100  # 50 steps, guidance 5: a negative pass on every step
        fast, fast_weights, fast_calls = run({"quality": "fast"})
        assert fast_weights == {("transformer", (("lightx2v", 0.5), ("svi", 1.0))),
                                ("transformer_2", (("lightx2v", 1.0), ("svi", 1.0)))}
        assert fast_calls == 4
        again, _, _ = run({"quality": "quality"})
        assert np.array_equal(again, quality)  # LightX2V back at 0 leaves no trace of the fast job
        # and LightX2V at its fast strengths is what changes the fast job's output
        without, without_weights, _ = run({"quality": "fast", "lightx2v_high": 0.0, "lightx2v_low": 0.0})
        assert ("transformer_2", (("lightx2v", 0.0), ("svi", 1.0))) in without_weights
        assert not np.array_equal(without, fast)
        assert load_models(config) is models  # one load for all four jobs
    finally:
        unload_models()
