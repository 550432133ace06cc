"""The planner's decisions under given budgets, and its refusals."""
import pytest

from engine.memory.planner import (
    GIB, STAGING_BUFFERS, STREAM_BUFFERS, ExpertSizes, MemoryNeeds, PlacementError, format_plan, plan_placement,
    vram_floor,
)

MIB = 1024**2


def a14b_needs(activation_gib: float = 4.0, text_encoder_gib: float = 10.6) -> MemoryNeeds:
    """Two Q4_K_M-sized experts: 40 blocks of 225 MiB plus 0.2 GiB of non-block weights each."""
    expert = lambda name: ExpertSizes(name, block_bytes=(225 * MIB,) * 40, other_bytes=int(0.2 * GIB))
    return MemoryNeeds(
        experts=(expert("transformer"), expert("transformer_2")),
        vae_bytes=int(0.25 * GIB),
        text_encoder_bytes=int(text_encoder_gib * GIB),
        activation_bytes=int(activation_gib * GIB),
        host_reserve_bytes=2 * GIB,
    )


def test_everything_resident_when_vram_is_big():
    plan = plan_placement(a14b_needs(), vram_budget=80 * GIB, ram_budget=100 * GIB)
    assert plan.locations("transformer") == ("vram",) * 40
    assert plan.locations("transformer_2") == ("vram",) * 40
    assert plan.stream_buffer_bytes == 0
    assert plan.streamed_bytes_per_forward("transformer") == 0
    assert plan.text_encoder == "vram"


def test_t4_budget_splits_vram_and_pinned_ram_without_disk():
    needs = a14b_needs()
    plan = plan_placement(needs, vram_budget=15 * GIB, ram_budget=11 * GIB)
    high, low = plan.locations("transformer"), plan.locations("transformer_2")
    assert "disk" not in high + low
    assert plan.bytes_at("disk") == 0
    # Both experts keep about the same number of resident blocks.
    assert abs(high.count("vram") - low.count("vram")) <= 1
    assert plan.vram_bytes <= 15 * GIB
    assert plan.ram_bytes <= 11 * GIB
    assert plan.stream_buffer_bytes == STREAM_BUFFERS * 225 * MIB
    # Every block is somewhere, and the resident ones are exactly what VRAM holds.
    vram_blocks = (high + low).count("vram")
    assert vram_blocks == (15 * GIB - vram_floor(needs)) // (225 * MIB)


def test_blocks_spill_to_disk_only_when_ram_is_full():
    plan = plan_placement(a14b_needs(text_encoder_gib=6.7), vram_budget=10 * GIB, ram_budget=6 * GIB)
    locs = plan.locations("transformer") + plan.locations("transformer_2")
    ram_bytes = locs.count("ram") * 225 * MIB
    assert plan.staging_bytes == STAGING_BUFFERS * 225 * MIB  # file-read blocks pass through pinned staging
    # 6 GiB budget less the 2 GiB the process keeps for itself, less the staging buffers
    assert ram_bytes <= 4 * GIB - plan.staging_bytes
    assert 4 * GIB - plan.staging_bytes - ram_bytes < 225 * MIB  # and no room left for one more block
    assert locs.count("disk") > 0
    assert plan.bytes_at("disk") == locs.count("disk") * 225 * MIB
    assert plan.disk_bytes_per_forward("transformer") == plan.locations("transformer").count("disk") * 225 * MIB


def test_refuses_below_the_vram_floor_naming_the_numbers():
    needs = a14b_needs(activation_gib=4.0, text_encoder_gib=1.0)
    floor = vram_floor(needs)
    with pytest.raises(PlacementError) as err:
        plan_placement(needs, vram_budget=4 * GIB, ram_budget=100 * GIB)
    msg = str(err.value)
    assert "VRAM budget 4.00 GiB" in msg
    assert f"{floor / GIB:.2f} GiB" in msg
    assert "activations 4.00 GiB" in msg and "3 stream buffers of the largest block 0.22 GiB" in msg
    # Exactly at the floor it runs, streaming everything from disk when RAM holds only the staging buffers.
    plan = plan_placement(needs, vram_budget=floor, ram_budget=2 * GIB + STAGING_BUFFERS * 225 * MIB)
    assert set(plan.locations("transformer")) == {"disk"}


def test_refuses_a_text_encoder_that_fits_nowhere():
    with pytest.raises(PlacementError, match="text encoder of 10.60 GiB"):
        plan_placement(a14b_needs(), vram_budget=8 * GIB, ram_budget=8 * GIB)


def test_format_plan_has_one_line_per_component():
    plan = plan_placement(a14b_needs(), vram_budget=15 * GIB, ram_budget=11 * GIB)
    text = format_plan(plan)
    lines = text.splitlines()
    assert lines[0].startswith("text_encoder")
    assert any(l.startswith("transformer ") and "vram [0-" in l and "ram [" in l for l in lines)
    assert any(l.startswith("transformer_2 ") for l in lines)
    assert any(l.startswith("vae") for l in lines)
    assert "budget 15.00 GiB" in lines[-1]


def lora_needs(lora_mib: int = 46, file_mib: int = 230, vae_activation_gib: float = 4.8) -> MemoryNeeds:
    """Q4_K_M-like experts carrying SVI + LightX2V factors: each block is its file part plus LoRAs in RAM."""
    block = (file_mib + lora_mib) * MIB
    expert = lambda name: ExpertSizes(name, block_bytes=(block,) * 40, other_bytes=int(0.13 * GIB),
                                      block_file_bytes=(file_mib * MIB,) * 40, lora_bytes=40 * lora_mib * MIB)
    return MemoryNeeds(
        experts=(expert("transformer"), expert("transformer_2")), vae_bytes=int(0.24 * GIB), text_encoder_bytes=0,
        activation_bytes=int(4.2 * GIB), vae_activation_bytes=int(vae_activation_gib * GIB),
        dequant_bytes=400 * MIB, host_reserve_bytes=2 * GIB,
    )


def test_t4_accounting_with_lora_carrying_blocks_disk_parts_and_staging():
    needs = lora_needs()
    plan = plan_placement(needs, vram_budget=15 * GIB, ram_budget=11 * GIB)
    locs = plan.locations("transformer") + plan.locations("transformer_2")
    n_vram, n_ram, n_disk = locs.count("vram"), locs.count("ram"), locs.count("disk")
    assert n_vram + n_ram + n_disk == 80 and n_disk > 0  # 2 x 40 x 276 MiB is more than both budgets hold
    # VRAM: resident blocks + non-block + VAE + the larger of (activations + dequantization + 3 stream
    # buffers) and the VAE decode.
    step = int(4.2 * GIB) + 400 * MIB + STREAM_BUFFERS * 276 * MIB
    assert plan.workspace_bytes == step  # 5.6 GiB > 4.8 GiB of VAE decode
    assert plan.vram_bytes == n_vram * 276 * MIB + 2 * int(0.13 * GIB) + int(0.24 * GIB) + step
    assert plan.vram_bytes <= 15 * GIB < plan.vram_bytes + 276 * MIB  # filled up to a block
    # RAM: pinned blocks + the LoRA factors of disk blocks + 2 staging buffers of a block's file part + process
    assert plan.disk_resident_bytes == n_disk * 46 * MIB
    assert plan.staging_bytes == 2 * 230 * MIB
    assert plan.ram_bytes == n_ram * 276 * MIB + n_disk * 46 * MIB + 2 * 230 * MIB + 2 * GIB
    assert plan.ram_bytes <= 11 * GIB
    # each forward reads only the file parts of its disk blocks
    assert plan.disk_bytes_per_forward("transformer") == plan.locations("transformer").count("disk") * 230 * MIB
    assert plan.streamed_bytes_per_forward("transformer") == (40 - plan.locations("transformer").count("vram")) * 276 * MIB


def test_disk_blocks_resident_parts_push_pinned_blocks_to_disk():
    # Parts of disk blocks that stay in RAM are large here: a greedy fill would overrun the RAM budget.
    needs = lora_needs(lora_mib=150, file_mib=100)
    plan = plan_placement(needs, vram_budget=18 * GIB, ram_budget=8 * GIB)
    locs = plan.locations("transformer") + plan.locations("transformer_2")
    assert plan.ram_bytes <= 8 * GIB
    greedy_ram = (6 * GIB) // (250 * MIB)  # what fits in RAM if disk blocks held nothing
    assert locs.count("ram") < greedy_ram
    # one more pinned block would no longer fit beside the disk blocks' own parts
    assert plan.ram_bytes + (250 - 150) * MIB > 8 * GIB


def test_vae_decode_sets_the_workspace_when_larger_than_a_step():
    needs = lora_needs(vae_activation_gib=7.0)
    plan = plan_placement(needs, vram_budget=15 * GIB, ram_budget=11 * GIB)
    assert plan.workspace_bytes == int(7.0 * GIB)
    assert vram_floor(needs) == int(7.0 * GIB) + int(0.24 * GIB) + 2 * int(0.13 * GIB)


def test_refuses_ram_too_small_even_for_disk_blocks_resident_parts():
    with pytest.raises(PlacementError, match="cannot hold even the parts of disk-streamed blocks that stay in RAM"):
        plan_placement(lora_needs(), vram_budget=8 * GIB, ram_budget=4 * GIB)


def test_everything_resident_needs_no_stream_buffers_or_staging():
    plan = plan_placement(lora_needs(), vram_budget=40 * GIB, ram_budget=4 * GIB)
    assert set(plan.locations("transformer")) == {"vram"}
    assert plan.stream_buffer_bytes == plan.staging_bytes == 0
    assert plan.workspace_bytes == int(4.8 * GIB)  # VAE decode > activations + dequantization


def test_format_plan_says_when_blocks_are_read_from_disk_with_numbers():
    plan = plan_placement(lora_needs(), vram_budget=15 * GIB, ram_budget=11 * GIB)
    text = format_plan(plan)
    assert "incl. LoRAs 1.80 GiB" in text
    n_disk = sum(locs.count("disk") for _, locs in plan.blocks)
    per_segment = 2 * n_disk * 230 * MIB / GIB
    assert text.splitlines()[-1].startswith(
        f"NOT ALL RESIDENT: the experts' blocks need {80 * 276 * MIB / GIB:.2f} GiB but VRAM and pinned RAM hold")
    assert f"{n_disk} blocks stay in the mapped files and {per_segment:.2f} GiB is read from disk every segment" in text
    assert "NOT ALL RESIDENT" not in format_plan(plan_placement(lora_needs(), vram_budget=40 * GIB, ram_budget=4 * GIB))
