"""Settings validation: every bad value raises BadSetting naming it; dicts round-trip."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import RECIPES, WAN_NEGATIVE_PROMPT, GenerationSettings, LoraStrengths
from engine.models.config import EngineConfig, default_preset
from engine.models.presets import PRESETS
from storage.errors import BadSetting


def test_defaults_are_the_fast_recipe_at_480p():
    s = GenerationSettings()
    assert (s.num_frames, s.height, s.width, s.num_inference_steps) == (81, 480, 832, 4)
    assert (s.guidance_high, s.guidance_low, s.boundary_ratio, s.shift) == (1.0, 1.0, 0.875, 5.0)
    assert (s.svi_high, s.svi_low, s.lightx2v_high, s.lightx2v_low) == (1.0, 1.0, 0.5, 1.0)
    assert (s.fps, s.chaining) == (16, "svi-pro")
    assert s.with_recipe(RECIPES["fast"]) == s
    assert s.negative_prompt == WAN_NEGATIVE_PROMPT and s.negative_prompt.startswith("色调艳丽")
    assert s.num_latent_frames == 21


@pytest.mark.parametrize("key, value, words", [
    ("num_frames", 80, "4k+1"),
    ("num_frames", 1, "4k+1"),
    ("height", 481, "multiple of 16"),
    ("width", 0, "multiple of 16"),
    ("num_inference_steps", 0, "num_inference_steps"),
    ("guidance_high", 0.5, "guidance_high"),
    ("guidance_low", 21, "guidance_low"),
    ("boundary_ratio", 1.5, "boundary_ratio"),
    ("lightx2v_high", -0.5, "lightx2v_high"),
    ("svi_low", 4.5, "svi_low"),
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
    s = GenerationSettings(seed=5, guidance_high=3.5, chaining="last-frame")
    assert GenerationSettings.from_dict(s.to_dict()) == s
    assert GenerationSettings.from_dict({"guidance_low": 2}).guidance_low == 2.0


def test_a_stored_guidance_scale_sets_both_experts():
    s = GenerationSettings.from_dict({"guidance_scale": 3.5})  # jobs queued before per-expert guidance
    assert (s.guidance_high, s.guidance_low) == (3.5, 3.5)


def test_svi_pro_segments_are_at_most_81_frames_and_need_the_svi_lora():
    # SVI's pinned issue #51 (vita-epfl/Stable-Video-Infinity): 81 frames per clip; 121 degrades colour
    GenerationSettings(num_frames=81)
    with pytest.raises(BadSetting, match="num_frames is 85; the limit with svi-pro chaining is 81"):
        GenerationSettings(num_frames=85)
    assert GenerationSettings(num_frames=161, chaining="last-frame").num_frames == 161
    with pytest.raises(BadSetting, match="svi_high and svi_low are both 0"):
        GenerationSettings(svi_high=0.0, svi_low=0.0)
    GenerationSettings(svi_high=0.0, svi_low=0.0, chaining="last-frame")


def test_last_frame_chaining_runs_without_the_svi_lora():
    s = GenerationSettings(chaining="last-frame")
    assert s.lora_strengths == LoraStrengths(svi_high=0.0, svi_low=0.0, lightx2v_high=0.5, lightx2v_low=1.0)
    assert GenerationSettings().lora_strengths == LoraStrengths(1.0, 1.0, 0.5, 1.0)


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
