"""Settings validation: every bad value raises BadSetting naming it; dicts round-trip."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import WAN_NEGATIVE_PROMPT, GenerationSettings
from engine.models.config import EngineConfig, default_preset
from engine.models.presets import PRESETS
from storage.errors import BadSetting


def test_defaults_are_the_t4_setting():
    s = GenerationSettings()
    assert (s.num_frames, s.height, s.width, s.num_inference_steps, s.guidance_scale) == (81, 480, 832, 4, 1.0)
    assert (s.boundary_ratio, s.shift, s.fps, s.chaining) == (0.9, 5.0, 16, "svi-pro")
    assert s.negative_prompt == WAN_NEGATIVE_PROMPT and s.negative_prompt.startswith("色调艳丽")
    assert s.num_latent_frames == 21


@pytest.mark.parametrize("key, value, words", [
    ("num_frames", 80, "4k+1"),
    ("num_frames", 1, "4k+1"),
    ("height", 481, "multiple of 16"),
    ("width", 0, "multiple of 16"),
    ("num_inference_steps", 0, "num_inference_steps"),
    ("guidance_scale", 0.5, "guidance_scale"),
    ("boundary_ratio", 1.5, "boundary_ratio"),
    ("chaining", "loop", "chaining"),
    ("seed", -1, "seed"),
])
def test_bad_values_name_the_setting_and_the_value(key, value, words):
    with pytest.raises(BadSetting) as err:
        GenerationSettings.from_dict({key: value})
    assert words in str(err.value) and str(value) in str(err.value)


def test_unknown_keys_and_wrong_types_are_refused():
    with pytest.raises(BadSetting, match="unknown setting"):
        GenerationSettings.from_dict({"steps": 4})
    with pytest.raises(BadSetting, match="num_frames"):
        GenerationSettings.from_dict({"num_frames": "81"})


def test_dict_round_trip_and_int_for_float():
    s = GenerationSettings(seed=5, guidance_scale=3.5, chaining="last-frame")
    assert GenerationSettings.from_dict(s.to_dict()) == s
    assert GenerationSettings.from_dict({"guidance_scale": 2}).guidance_scale == 2.0


def test_quality_levels():
    assert GenerationSettings().with_quality("quality").num_inference_steps == 40
    assert GenerationSettings().with_quality("quality").guidance_scale == 3.5
    assert GenerationSettings(num_inference_steps=40).with_quality("fast").num_inference_steps == 4
    with pytest.raises(BadSetting):
        GenerationSettings().with_quality("ultra")


def test_orientation_swaps_sides():
    s = GenerationSettings()
    assert (s.oriented(portrait=True).height, s.oriented(portrait=True).width) == (832, 480)
    assert s.oriented(portrait=False) == s


def test_engine_config_checks_preset_dtype_and_overrides(tmp_path):
    with pytest.raises(BadSetting, match="q9"):
        EngineConfig(preset="q9", models_dir=tmp_path)
    with pytest.raises(BadSetting, match="float8"):
        EngineConfig(preset="tiny", models_dir=tmp_path, dtype="float8")
    with pytest.raises(BadSetting, match="high_path"):
        EngineConfig(preset="q4_k_m", models_dir=tmp_path, file_overrides=(("high_path", "x"),))
    EngineConfig(preset="q4_k_m", models_dir=tmp_path, file_overrides=(("high_repo", "bullerwins/Wan2.2-I2V-A14B-GGUF"),))


def test_default_preset_without_cuda_is_tiny():
    import torch

    assert default_preset() == ("q4_k_m" if torch.cuda.is_available() else "tiny")
    assert PRESETS["tiny"].is_random_weights and "random weights" in PRESETS["tiny"].label
    assert not PRESETS["q4_k_m"].is_random_weights


def test_package_import_is_light():
    import subprocess
    import sys

    code = "import sys, engine, engine.errors, engine.config, engine.models.presets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True)
    assert out.stdout.strip() == "False"
