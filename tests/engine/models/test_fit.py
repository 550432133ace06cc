"""Which preset fits a T4's budgets with LoRAs counted, said in numbers at start-up and by `svibot download`."""
from __future__ import annotations

import logging

import pytest

from engine.memory.planner import GIB
from engine.models.fit import fit_report, fits, largest_fitting, pick_default, preset_needs
from engine.models.presets import PRESETS

T4 = dict(vram_budget=15 * GIB, ram_budget=11 * GIB)


def test_preset_needs_carry_each_experts_lora_share_in_every_block():
    needs = preset_needs("q4_k_m")
    sizes = PRESETS["q4_k_m"].sizes
    high = needs.experts[0]
    assert high.lora_bytes == pytest.approx(sizes["svi_high"] + sizes["lightx2v_high"], abs=40)  # 16-bit, as shipped
    assert sum(high.block_bytes) + high.other_bytes == pytest.approx(sizes["high"] + high.lora_bytes, abs=80)
    assert all(b - f == high.lora_bytes // 40 for b, f in zip(high.block_bytes, high.block_file_bytes))
    assert preset_needs("q4_k_m", use_loras=False).experts[0].lora_bytes == 0
    assert preset_needs("q4_k_m", itemsize=4).experts[0].lora_bytes == pytest.approx(2 * high.lora_bytes, abs=80)


def test_on_a_t4_the_loras_push_q4_k_m_to_disk_and_q3_k_m_fits():
    assert not fits("q4_k_m", **T4)
    # with half a GiB more RAM the experts alone would fit; the 3.4 GiB of LoRA factors are what do not
    assert fits("q4_k_m", 15 * GIB, 11.5 * GIB, use_loras=False) and not fits("q4_k_m", 15 * GIB, 11.5 * GIB)
    assert fits("q3_k_m", **T4)
    assert largest_fitting(**T4) == "q3_k_m"
    assert pick_default(**T4) == "q3_k_m"
    assert pick_default(80 * GIB, 100 * GIB) == "q4_k_m"  # a big GPU keeps the default, never more
    assert largest_fitting(80 * GIB, 100 * GIB) == "q8_0"


def test_fit_report_names_the_numbers_and_the_preset_that_fits():
    text = fit_report("q4_k_m", **T4)
    needs = preset_needs("q4_k_m")
    total = sum(sum(e.block_bytes) + e.other_bytes for e in needs.experts) / GIB
    assert text.startswith(f"preset q4_k_m: both experts with their LoRAs hold {total:.2f} GiB (LoRAs ")
    assert "under 15.0 GiB VRAM + 11.0 GiB RAM its blocks need" in text
    assert "GB from disk; the largest preset that fits is q3_k_m (--preset q3_k_m)" in text
    assert fit_report("q3_k_m", **T4).endswith("it fits 15.0 GiB VRAM + 11.0 GiB RAM with no disk reads per segment")
    assert "no preset fits without disk reads" in fit_report("q4_k_m", 8 * GIB, 4 * GIB)


def test_start_up_warns_with_numbers_when_blocks_would_be_read_from_disk(tmp_path, caplog):
    """The real-preset path on tiny GGUF files: budgets too small for both experts warn at load."""
    from engine.memory.planner import vram_floor
    from engine.models.config import EngineConfig
    from engine.models.loading import Models, check_fit
    from engine.models.lora import load_lora
    from engine.models.loading import load_expert_gguf
    from engine.models.presets import Preset
    from engine.models.tiny import build_tiny_components
    from engine.models.placement import plan_models
    from tests.support.engine_helpers import GGUF_TRANSFORMER, write_tiny_gguf_expert

    import torch

    path, config_dir, _ = write_tiny_gguf_expert(tmp_path)
    parts = build_tiny_components()
    experts = [load_expert_gguf(path, config_dir, "transformer", torch.float32) for _ in range(2)]
    dim = GGUF_TRANSFORMER["num_attention_heads"] * GGUF_TRANSFORMER["attention_head_dim"]
    for e in experts:
        load_lora(e, {"blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(64, dim),
                      "blocks.0.self_attn.q.lora_B.default.weight": torch.zeros(dim, 64)}, "svi")
    models = Models(transformer=experts[0], transformer_2=experts[1], vae=parts["vae"], text_encoder=parts["text_encoder"],
                    tokenizer=parts["tokenizer"], device=torch.device("cpu"), dtype=torch.float32, preset="t",
                    label="t")
    preset = Preset(name="t", files=None, sizes={}, settings=PRESETS["tiny"].settings)
    roomy = plan_models(models, torch.device("cpu"), 10**12, 10**12, settings=preset.settings)
    floor = vram_floor(roomy.needs)
    block = max(roomy.needs.experts[0].block_bytes)
    # RAM for the staging buffers and the in-memory parts of every block, but not for a whole block more
    e = roomy.needs.experts
    kept = sum(x.resident_bytes(i) for x in e for i in range(len(x.block_bytes)))
    ram = roomy.needs.host_reserve_bytes + 2 * max(x.file_bytes(i) for x in e for i in range(len(x.block_bytes))) + kept
    config = EngineConfig(preset="tiny", models_dir=tmp_path, vram_budget_gib=(floor + block) / GIB,
                          ram_budget_gib=ram / GIB)
    with caplog.at_level(logging.WARNING, logger="engine.models.loading"):
        plan = check_fit(models, torch.device("cpu"), config, preset)
    assert plan.bytes_at("disk") > 0
    assert "preset t: NOT ALL RESIDENT: the experts' blocks need" in caplog.text
    assert "is read from disk every segment; no preset fits these budgets without disk reads" in caplog.text
