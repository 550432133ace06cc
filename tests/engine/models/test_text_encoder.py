"""The lazy UMT5: read from its files only on a cache miss, same embeddings as the eager encoder, freed after."""
from __future__ import annotations

from dataclasses import replace

import torch
from transformers import UMT5EncoderModel

from engine.models.config import EngineConfig
from engine.models.download import download_preset
from engine.models.loading import load_models, unload_models
from engine.memory.planner import GIB, ExpertSizes, MemoryNeeds, format_plan, plan_placement
from engine.models.presets import PRESETS, Preset
from engine.svi import encode_prompts, generate_story
from engine.models.text_encoder import LazyTextEncoder
from engine.models.tiny import build_tiny_components
from tests.support.engine_helpers import make_photo
from tests.support.fake_hub import FakeHub
from test_real_preset_path import REPO, tiny_repo, tiny_repo_files  # noqa: F401  (tiny_repo is a fixture)


def eager_embeddings(models, path, texts):
    eager = UMT5EncoderModel.from_pretrained(path, dtype=torch.float32).eval()
    return encode_prompts(replace(models, text_encoder=eager), texts)


def test_loaded_only_on_a_cache_miss_and_freed(tiny_repo, tmp_path, monkeypatch):  # noqa: F811
    repos, configs = tiny_repo
    files = tiny_repo_files()
    # no LoRAs loaded: plain Wan 2.2, so last-frame chaining
    settings = replace(PRESETS["tiny"].settings, num_frames=5, chaining="last-frame")
    preset = Preset(name="tiny_te", files=files, sizes={}, settings=settings,
                    config_dir=configs)
    monkeypatch.setitem(PRESETS, "tiny_te", preset)
    with FakeHub(repos) as hub:
        download_preset("tiny_te", tmp_path / "models", endpoint=hub.endpoint, progress=False, token=None)
    try:
        models = load_models(EngineConfig(preset="tiny_te", models_dir=tmp_path / "models", device="cpu",
                                          use_loras=False, cache_dir=tmp_path / "cache"))
        te = models.text_encoder
        assert isinstance(te, LazyTextEncoder) and te.loads == 0 and models.place_pending is not None
        assert models.text_cache.encoder_id == f"{REPO}/text_encoder:torch.float32@{models.max_sequence_length}"

        generate_story(models, make_photo(), ["walk"], preset.settings)
        assert (te.loads, te.last.mode) == (1, "whole")  # the first job, before the experts were placed
        assert te.last_module() is None  # freed: nothing references the module any more
        assert models.place_pending is None and te.experts_placed
        expected = eager_embeddings(models, te.path, ["walk"])
        assert torch.equal(models.text_cache.get("walk")[None], expected)

        generate_story(models, make_photo(), ["walk"], preset.settings)  # a re-roll: cache hit
        assert te.loads == 1

        te.host_bytes = 1024  # a later job with new text streams most layers from disk
        generate_story(models, make_photo(), ["jump"], preset.settings)
        assert (te.loads, te.last.mode) == (2, "offload")
        assert te.last.streamed_bytes > 0 and te.last_module() is None
        assert torch.equal(models.text_cache.get("jump")[None], eager_embeddings(models, te.path, ["jump"]))
    finally:
        unload_models()


def test_disk_offload_gives_the_same_embeddings(tmp_path):
    parts = build_tiny_components()
    parts["text_encoder"].save_pretrained(tmp_path / "te")
    tok = parts["tokenizer"](["a cat", "a dog walks home"], padding="max_length", max_length=16,
                             return_tensors="pt")
    eager = UMT5EncoderModel.from_pretrained(tmp_path / "te", dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = eager(tok.input_ids, tok.attention_mask).last_hidden_state

    te = LazyTextEncoder(tmp_path / "te", torch.device("cpu"), torch.float32, tmp_path / "offload", host_bytes=1024)
    te.experts_placed = True
    got = te(tok.input_ids, tok.attention_mask).last_hidden_state
    assert torch.equal(got, expected)
    assert te.last.mode == "offload" and 0 < te.last.streamed_bytes <= te.last.disk_bytes == te.nbytes
    assert te.last_module() is None


def test_plan_says_where_the_lazy_encoder_runs():
    needs = MemoryNeeds(experts=(ExpertSizes("transformer", (GIB,) * 4, 0),), vae_bytes=0, text_encoder_bytes=0,
                        activation_bytes=GIB)
    plan = plan_placement(needs, 8 * GIB, 8 * GIB)
    plan = replace(plan, needs=replace(needs, text_encoder_bytes=11 * GIB), text_encoder="file")
    line = format_plan(plan).splitlines()[0]
    assert "11.00 GiB" in line and "before the experts are placed" in line and "never held in RAM" in line


def test_whole_load_reads_the_shards_as_from_pretrained_builds_them(tmp_path):
    """Plain reads through a staging buffer give the model from_pretrained gives: values, dtypes (fp16 keeps
    UMT5's `wo` in fp32), the tied embedding; shards of bf16 weights, as the Wan repos ship them."""
    from engine.models.text_encoder import load_whole

    encoder = build_tiny_components()["text_encoder"].to(torch.bfloat16)
    encoder.save_pretrained(tmp_path / "te", max_shard_size="20KB")
    assert len(list((tmp_path / "te").glob("*.safetensors"))) > 1
    for dtype in (torch.float32, torch.float16):
        ours = load_whole(tmp_path / "te", torch.device("cpu"), dtype)
        theirs = UMT5EncoderModel.from_pretrained(tmp_path / "te", dtype=dtype)
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        assert ours.encoder.embed_tokens.weight is ours.shared.weight
        if dtype == torch.float16:
            assert ours.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
