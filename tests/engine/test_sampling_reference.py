"""Golden numbers from the reference implementations: the timestep grid, the expert per step, the cost of each
recipe and the frame arithmetic of both chaining modes.

Sources (public):
- SVI 2.0 Pro: vita-epfl/Stable-Video-Infinity branch svi_wan22, diffsynth/diffusion/flow_match.py
  `set_timesteps_wan` (sigmas = linspace(1, 0, n + 1)[:-1], shifted), diffsynth/pipelines/wan_video_svi_pro.py
  (50 steps, cfg 5, switch_DiT_boundary 0.875, sigma_shift 5; switches once t < boundary * 1000),
  inference_svi_2.0_pro.py and README.md (`--num_overlap_frame 5`, 81 frames per clip).
- LightX2V: ModelTC/LightX2V configs/distill/wan22/wan_moe_i2v_distill_with_lora.json (denoising_step_list
  [1000, 750, 500, 250], sample_shift 5, boundary_step_index 2) and
  lightx2v/models/schedulers/wan/step_distill/scheduler.py.
- Wan 2.2: Wan-Video/Wan2.2 wan/image2video.py (`t.item() >= boundary` runs the high-noise model).
- ComfyUI: comfy/samplers.py `simple_scheduler` over comfy/model_sampling.py's shifted table.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import RECIPES, GenerationSettings
from engine.sampling import expert_per_step, forwards_per_segment, make_scheduler, segment_timesteps


def timesteps(n: int, shift: float = 5.0) -> list[float]:
    return [float(t) for t in segment_timesteps(GenerationSettings(num_inference_steps=n, shift=shift))]


def svi_set_timesteps_wan(n: int, shift: float = 5.0) -> np.ndarray:
    """SVI's DiffSynth `FlowMatchScheduler.set_timesteps_wan` with denoising_strength 1, written out."""
    sigmas = torch.linspace(1.0, 0.0, n + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return (sigmas * 1000).numpy()


def lightx2v_step_distill(denoising_step_list: list[int], shift: float = 5.0) -> np.ndarray:
    """LightX2V's step-distill scheduler: a 1000-point shifted table indexed at 1000 - x."""
    sigmas = torch.linspace(1.0, 0.0, 1000 + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return (sigmas * 1000)[[1000 - x for x in denoising_step_list]].numpy()


def comfy_simple(n: int, shift: float = 5.0) -> np.ndarray:
    """ComfyUI `simple` scheduler on ModelSamplingDiscreteFlow(shift) (multiplier 1000)."""
    s = torch.arange(1, 1001, dtype=torch.float64) / 1000
    table = shift * s / (1 + (shift - 1) * s)  # ascending sigma(k / 1000)
    ss = len(table) / n
    return np.array([float(table[-(1 + int(x * ss))]) for x in range(n)]) * 1000


def test_four_steps_at_shift_5_are_1000_937_833_625():
    assert timesteps(4) == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)
    np.testing.assert_allclose(timesteps(4), svi_set_timesteps_wan(4), atol=1e-3)
    np.testing.assert_allclose(timesteps(4), lightx2v_step_distill([1000, 750, 500, 250]), atol=1e-3)
    np.testing.assert_allclose(timesteps(4), comfy_simple(4), atol=1e-3)


def test_the_last_step_goes_to_sigma_0():
    for n in (4, 8, 50):
        sigmas = make_scheduler(GenerationSettings(num_inference_steps=n)).sigmas
        assert len(sigmas) == n + 1 and float(sigmas[-1]) == 0.0
        assert float(sigmas[-2]) == pytest.approx(5 * (1 / n) / (1 + 4 * (1 / n)), abs=1e-6)


def test_eight_and_fifty_step_grids():
    assert timesteps(8) == pytest.approx(
        [1000.0, 972.2222, 937.5, 892.8571, 833.3333, 750.0, 625.0, 416.6667], abs=1e-3)
    fifty = [
        1000.0000, 995.9350, 991.7355, 987.3950, 982.9060, 978.2609, 973.4513, 968.4685, 963.3028, 957.9439,
        952.3810, 946.6019, 940.5941, 934.3434, 927.8351, 921.0526, 913.9785, 906.5934, 898.8764, 890.8046,
        882.3529, 873.4940, 864.1975, 854.4304, 844.1558, 833.3333, 821.9178, 809.8592, 797.1014, 783.5821,
        769.2308, 753.9683, 737.7049, 720.3390, 701.7544, 681.8182, 660.3774, 637.2549, 612.2449, 585.1064,
        555.5556, 523.2558, 487.8049, 448.7179, 405.4054, 357.1429, 303.0303, 241.9355, 172.4138, 92.5926,
    ]
    assert timesteps(50) == pytest.approx(fifty, abs=1e-3)
    for n in (8, 50):
        np.testing.assert_allclose(timesteps(n), svi_set_timesteps_wan(n), atol=1e-3)
        np.testing.assert_allclose(timesteps(n), comfy_simple(n), atol=1e-3)
    assert timesteps(40)[-1] == pytest.approx(113.6364, abs=1e-3)  # not 24.4 (set_timesteps(n) shifts twice)


def test_diffusers_set_timesteps_alone_is_not_the_reference_grid():
    """Why the engine passes `sigmas=`: set_timesteps(n) ends at a twice-shifted sigma_min."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    scheduler.set_timesteps(4)
    assert [float(t) for t in scheduler.timesteps] == pytest.approx([1000.0, 909.7072, 717.3174, 24.4141], abs=1e-3)


@pytest.mark.parametrize("n, boundary, high", [
    (4, 0.875, 2),  # 2 + 2, LightX2V's boundary_step_index 2
    (8, 0.875, 4),  # the first low step is t = 833.33
    (50, 0.875, 21),  # the last high step is t = 882.35, the first low one t = 873.49
    (4, 0.9, 2),
    (8, 0.9, 3),  # Wan's own 0.9 sends t = 892.86 to the low-noise expert
    (50, 0.9, 18),
    (6, 0.875, 3),  # SVI 2.0's 6-step workflow splits 3 + 3
])
def test_expert_per_step(n, boundary, high):
    experts = expert_per_step(GenerationSettings(num_inference_steps=n, boundary_ratio=boundary))
    assert experts == ["high"] * high + ["low"] * (n - high)
    # the same rule written as SVI 2.0 Pro writes it: switch to the low expert once t < boundary * 1000
    assert experts == ["low" if t < boundary * 1000 else "high" for t in svi_set_timesteps_wan(n)]


@pytest.mark.parametrize("n, boundary, step", [(12, 0.875, 5), (14, 0.9, 5)])
def test_a_step_exactly_on_the_boundary_runs_on_the_high_noise_expert(n, boundary, step):
    ts = timesteps(n)
    assert ts[step] == boundary * 1000  # exactly 875.0 / 900.0 in fp32
    experts = expert_per_step(GenerationSettings(num_inference_steps=n, boundary_ratio=boundary))
    assert experts[step] == "high" and experts[step + 1] == "low"


def test_recipe_costs_in_transformer_forwards():
    base = GenerationSettings()
    assert forwards_per_segment(base.with_recipe(RECIPES["fast"])) == 4  # 4 steps x 1
    assert forwards_per_segment(base.with_recipe(RECIPES["quality"])) == 100  # 50 steps x 2 (cfg 5)
    # SVI 2.0's published Wan 2.2 workflow: 6 steps, cfg on both experts
    svi20 = RECIPES["fast"].with_overrides({"num_inference_steps": 6, "guidance_high": 1.5, "guidance_low": 1.5})
    assert forwards_per_segment(base.with_recipe(svi20)) == 12
    # guidance on the high-noise expert only: its 2 steps cost 2 forwards each
    assert forwards_per_segment(base.with_recipe(RECIPES["fast"].with_overrides({"guidance_high": 3.5}))) == 6


def test_recipes_are_svi_pro_and_lightx2v_settings():
    fast, quality = RECIPES["fast"], RECIPES["quality"]
    assert (fast.num_inference_steps, fast.guidance_high, fast.guidance_low, fast.boundary_ratio, fast.shift) == \
        (4, 1.0, 1.0, 0.875, 5.0)
    assert (fast.svi_high, fast.svi_low, fast.lightx2v_high, fast.lightx2v_low) == (1.0, 1.0, 0.5, 1.0)
    assert (quality.num_inference_steps, quality.guidance_high, quality.guidance_low) == (50, 5.0, 5.0)
    assert (quality.boundary_ratio, quality.shift) == (0.875, 5.0)
    assert (quality.svi_high, quality.svi_low, quality.lightx2v_high, quality.lightx2v_low) == (1.0, 1.0, 0.0, 0.0)


@pytest.mark.parametrize("chaining, added, total", [
    # SVI 2.0 Pro: anchor frame + the 4 frames of the carried latent are dropped at every seam
    ("svi-pro", [81, 76, 76], 233),
    # plain Wan I2V from the last frame: only that frame repeats
    ("last-frame", [81, 80, 80], 241),
])
def test_frame_arithmetic_of_both_chaining_modes(chaining, added, total):
    s = GenerationSettings(num_frames=81, chaining=chaining)
    assert [s.num_frames] + [s.num_frames - s.seam_frames] * 2 == added
    assert s.story_frames(3) == total == sum(added)
    assert s.num_latent_frames == 21  # (81 - 1) // 4 + 1


def test_tiny_stories_add_the_frames_the_arithmetic_says(tiny_models, photo, tiny_settings, settings_with):
    from engine.svi import generate_story

    for chaining, seam in (("svi-pro", 5), ("last-frame", 1)):
        settings = settings_with(tiny_settings, num_frames=9, chaining=chaining)
        results = generate_story(tiny_models, photo, ["walk", "run"], settings)
        assert [len(r.frames) for r in results] == [9, 9 - seam]
        assert sum(len(r.frames) for r in results) == settings.story_frames(2)
