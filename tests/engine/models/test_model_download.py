"""Preset downloads against a local fake Hub: cache layout, offline errors and the disk check."""
from __future__ import annotations

from collections import namedtuple
from dataclasses import replace
from pathlib import Path

import pytest

from engine.models import download
from engine.config import GenerationSettings
from engine.models.config import EngineConfig
from engine.models.download import download_preset, local_preset_files
from engine.errors import InsufficientDisk, ModelFileMissing
from engine.models.loading import load_models
from engine.models.presets import GGUF_REPO, PRESETS, ModelFiles, Preset
from tests.support.fake_hub import FakeHub

GGUF = "org/wan-gguf"
EXTRAS = "org/wan-extras"
REPOS = {
    GGUF: {"HighNoise/high.gguf": b"high" * 100, "LowNoise/low.gguf": b"low" * 100},
    EXTRAS: {
        "vae.safetensors": b"vae",
        "text_encoder/config.json": b"{}",
        "text_encoder/model.safetensors": b"te",
        "tokenizer/tokenizer.json": b"{}",
        "svi_high.safetensors": b"s1", "svi_low.safetensors": b"s2",
        "l_high.safetensors": b"l1", "l_low.safetensors": b"l2",
    },
}
FILES = ModelFiles(
    high_repo=GGUF, high_file="HighNoise/high.gguf", low_repo=GGUF, low_file="LowNoise/low.gguf",
    vae_repo=EXTRAS, vae_file="vae.safetensors", text_encoder_repo=EXTRAS, tokenizer_repo=EXTRAS,
    svi_high_repo=EXTRAS, svi_high_file="svi_high.safetensors", svi_low_repo=EXTRAS, svi_low_file="svi_low.safetensors",
    lightx2v_high_repo=EXTRAS, lightx2v_high_file="l_high.safetensors",
    lightx2v_low_repo=EXTRAS, lightx2v_low_file="l_low.safetensors",
)
PRESET = Preset(name="fake", files=FILES, sizes={"high": 400, "low": 300, "text_encoder": 1000},
                settings=GenerationSettings())


@pytest.fixture
def hub():
    with FakeHub(REPOS) as server:
        yield server


def test_download_fetches_every_part_into_the_hub_cache(hub, tmp_path):
    paths = download_preset(PRESET, tmp_path, endpoint=hub.endpoint, progress=False, token=None)
    assert set(paths) == {"high", "low", "vae", "text_encoder", "tokenizer",
                          "svi_high", "svi_low", "lightx2v_high", "lightx2v_low"}
    assert paths["high"].read_bytes() == REPOS[GGUF]["HighNoise/high.gguf"]
    assert (paths["text_encoder"] / "model.safetensors").read_bytes() == b"te"
    assert tmp_path in paths["high"].parents and "models--org--wan-gguf" in str(paths["high"])
    # a second run finds everything cached and fetches nothing again
    fetched = len(hub.downloads)
    download_preset(PRESET, tmp_path, endpoint=hub.endpoint, progress=False, token=None)
    assert len(hub.downloads) == fetched
    # and the loader's offline lookup sees the same files
    assert local_preset_files(FILES, tmp_path) == paths


def test_overrides_replace_repo_and_filename(hub, tmp_path):
    overrides = (("high_file", "LowNoise/low.gguf"),)
    paths = download_preset(PRESET, tmp_path, endpoint=hub.endpoint, progress=False, token=None,
                            file_overrides=overrides)
    assert paths["high"].read_bytes() == REPOS[GGUF]["LowNoise/low.gguf"]


def test_wrong_filename_names_the_repo_and_the_file(hub, tmp_path):
    bad = replace(PRESET, files=replace(FILES, vae_file="no/such.safetensors"))
    with pytest.raises(ModelFileMissing) as err:
        download_preset(bad, tmp_path, endpoint=hub.endpoint, progress=False, token=None)
    assert EXTRAS in str(err.value) and "no/such.safetensors" in str(err.value)
    assert (err.value.repo, err.value.filename) == (EXTRAS, "no/such.safetensors")


def test_offline_without_cache_names_the_repo_and_the_file(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelFileMissing) as err:
        download_preset(PRESET, tmp_path, progress=False, token=None)
    assert GGUF in str(err.value) and "HighNoise/high.gguf" in str(err.value)


def test_real_preset_without_files_fails_to_load_with_a_clear_error(tmp_path):
    with pytest.raises(ModelFileMissing) as err:
        load_models(EngineConfig(preset="q4_k_m", models_dir=tmp_path, device="cpu"))
    assert GGUF_REPO in str(err.value) and "HighNoise/Wan2.2-I2V-A14B-HighNoise-Q4_K_M.gguf" in str(err.value)


def test_too_small_disk_is_refused_before_any_download(hub, tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: Usage(10_000, 9_900, 100))
    with pytest.raises(InsufficientDisk) as err:
        download_preset(PRESET, tmp_path, endpoint=hub.endpoint, progress=False, token=None)
    assert hub.downloads == []
    assert (err.value.needed, err.value.free) == (PRESET.total_bytes, 100)
    assert "1700 bytes" in str(err.value) and "100 bytes" in str(err.value)


def test_real_presets_name_every_part_and_their_size():
    for name, preset in PRESETS.items():
        if preset.is_random_weights:
            assert download_preset(preset, Path("unused")) == {}
            continue
        quant = name.upper()
        assert preset.files.high_file == f"HighNoise/Wan2.2-I2V-A14B-HighNoise-{quant}.gguf"
        assert preset.files.low_file == f"LowNoise/Wan2.2-I2V-A14B-LowNoise-{quant}.gguf"
        assert {part for part, _, _ in preset.files.items()} == set(preset.sizes)
        assert preset.total_bytes > 2 * 7e9
    assert PRESETS["q4_k_m"].sizes["high"] == 9.65e9
