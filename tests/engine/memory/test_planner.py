"""The planner's decisions under given budgets, and its refusals."""
import pytest

from engine.memory.planner import (
    GIB, ExpertSizes, MemoryNeeds, PlacementError, format_plan, plan_placement, vram_floor,
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
    assert plan.stream_buffer_bytes == 2 * 225 * MIB
    # Every block is somewhere, and the resident ones are exactly what VRAM holds.
    vram_blocks = (high + low).count("vram")
    assert vram_blocks == (15 * GIB - vram_floor(needs)) // (225 * MIB)


def test_blocks_spill_to_disk_only_when_ram_is_full():
    plan = plan_placement(a14b_needs(text_encoder_gib=6.7), vram_budget=10 * GIB, ram_budget=6 * GIB)
    locs = plan.locations("transformer") + plan.locations("transformer_2")
    ram_bytes = locs.count("ram") * 225 * MIB
    assert ram_bytes <= 4 * GIB  # 6 GiB budget less the 2 GiB the process keeps for itself
    assert 4 * GIB - ram_bytes < 225 * MIB  # and no room left for one more block
    assert locs.count("disk") > 0
    assert plan.bytes_at("disk") == locs.count("disk") * 225 * MIB


def test_refuses_below_the_vram_floor_naming_the_numbers():
    needs = a14b_needs(activation_gib=4.0, text_encoder_gib=1.0)
    floor = vram_floor(needs)
    with pytest.raises(PlacementError) as err:
        plan_placement(needs, vram_budget=4 * GIB, ram_budget=100 * GIB)
    msg = str(err.value)
    assert "VRAM budget 4.00 GiB" in msg
    assert f"{floor / GIB:.2f} GiB" in msg
    assert "activations 4.00 GiB" in msg and "largest block 0.22 GiB" in msg
    # Exactly at the floor it runs, streaming everything from disk when RAM is tiny.
    plan = plan_placement(needs, vram_budget=floor, ram_budget=2 * GIB)
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
