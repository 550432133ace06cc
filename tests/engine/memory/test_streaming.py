"""Streamed blocks give the same forward as resident ones, and only one host copy is kept."""
import numpy as np
import pytest
import torch

from engine.memory.streaming import BlockStreamer, place_model

TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
    text_dim=32, freq_dim=256, ffn_dim=32, num_layers=4, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, rope_max_seq_len=32,
)


def tiny_transformer():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(**TINY).eval()


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 36, 3, 8, 8, generator=g)  # (B, C, F, H, W)
    t = torch.tensor([900.0])
    text = torch.randn(1, 7, 32, generator=g)  # (B, tokens, text_dim)
    return dict(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)


def block_storage(model):
    return [p.untyped_storage().data_ptr() for b in model.blocks for p in b.parameters()]


@torch.no_grad()
def test_streamed_forward_equals_resident_forward():
    model = tiny_transformer()
    resident = model(**inputs())[0]
    before = block_storage(model)

    streamer = place_model(model, ["vram", "ram", "ram", "ram"], "cpu")
    streamed = model(**inputs())[0]
    streamed_again = model(**inputs())[0]

    assert torch.equal(streamed, resident)  # same kernels, so bit for bit
    assert torch.equal(streamed_again, resident)
    # Three blocks copied in per forward, each counted as a RAM read, none from disk.
    per_block = sum(p.numel() * p.element_size() for p in model.blocks[1].parameters())
    assert streamer.stats.copies == 6
    assert streamer.stats.ram_bytes == 6 * per_block
    assert streamer.stats.disk_bytes == 0
    # Outside a forward the blocks point at their single host copy again, not at a leftover.
    assert block_storage(model) == before
    assert all(s.device_copies is None for s in streamer.slots.values())


@torch.no_grad()
def test_streamed_copies_are_what_the_block_runs_on():
    model = tiny_transformer()
    streamer = place_model(model, ["vram", "vram", "disk", "vram"], "cpu")
    seen = []
    model.blocks[2].register_forward_pre_hook(
        lambda m, a: seen.append(m.ffn.net[0].proj.weight.untyped_storage().data_ptr())
    )
    host_ptr = model.blocks[2].ffn.net[0].proj.weight.untyped_storage().data_ptr()
    model(**inputs())
    # Hooks run in registration order: the streamer's swap ran first, so the block saw a copy.
    assert seen and seen[0] != host_ptr
    # built in memory, so nothing of it is in a file: the "disk" block's tensors stay where they are
    assert streamer.stats.disk_bytes == 0
    assert streamer.stats.ram_bytes == sum(p.numel() * p.element_size() for p in model.blocks[2].parameters())
    streamer.remove()
    model(**inputs())
    assert seen[-1] == host_ptr


def test_rejects_a_location_list_of_the_wrong_length():
    model = tiny_transformer()
    with pytest.raises(ValueError, match="got 2 locations for 4 blocks"):
        BlockStreamer(model.blocks, ["vram", "ram"], "cpu")


@torch.no_grad()
def test_gguf_parameters_keep_their_quant_type_through_the_copy():
    import gguf
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    w = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    lin = GGUFLinear(64, 16, bias=False, compute_dtype=torch.float32)
    lin.weight = GGUFParameter(torch.from_numpy(q), quant_type=gguf.GGMLQuantizationType.Q8_0)
    blocks = torch.nn.ModuleList([lin])
    x = torch.randn(3, 64)
    ref = lin(x)
    streamer = BlockStreamer(blocks, ["ram"], "cpu")
    seen = []
    lin.register_forward_pre_hook(lambda m, a: seen.append(m.weight))
    out = blocks[0](x)
    assert isinstance(seen[0], GGUFParameter)
    assert seen[0].quant_type == gguf.GGMLQuantizationType.Q8_0
    assert torch.equal(out, ref)
    assert streamer.stats.ram_bytes == q.nbytes


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.no_grad()
def test_streamed_forward_on_cuda_matches_and_pins_one_copy():
    model = tiny_transformer()
    ref = model.to("cuda")(**{k: v.to("cuda") if torch.is_tensor(v) else v for k, v in inputs().items()})[0]
    model = tiny_transformer()
    streamer = place_model(model, ["ram", "vram", "ram", "ram"], "cuda", measure_waits=True)
    args = {k: v.to("cuda") if torch.is_tensor(v) else v for k, v in inputs().items()}
    out = model(**args)[0]
    streamer.stats.collect_waits()
    assert torch.allclose(out, ref, rtol=1e-3, atol=1e-5)
    assert all(p.is_pinned() for p in model.blocks[0].parameters())
    assert streamer.stats.ram_bytes > 0


@torch.no_grad()
def test_place_by_plan_streams_the_tiny_preset_within_a_small_budget():
    from engine.models.loading import Models
    from engine.memory.planner import vram_floor
    from engine.models.placement import HostTextEncoder, place_by_plan
    from engine.models.tiny import build_tiny_components

    def tiny_models():
        return Models(**build_tiny_components(), device=torch.device("cpu"), dtype=torch.float32,
                      preset="tiny", label="tiny")

    text = torch.randn(1, 7, 32)  # (B, tokens, text_dim)
    resident = tiny_models()  # the tiny preset is seeded, so both builds hold the same weights
    ref = resident.transformer(**{**inputs(), "encoder_hidden_states": text})[0]
    plan = place_by_plan(resident, torch.device("cpu"), vram_budget=10**12, ram_budget=10**12)
    assert set(plan.locations("transformer") + plan.locations("transformer_2")) == {"vram"}
    assert not isinstance(resident.text_encoder, HostTextEncoder)

    models = tiny_models()
    needs = plan.needs  # the same tiny weights, so the same sizes and workspace
    one_block = max(needs.experts[0].block_bytes)
    plan = place_by_plan(models, torch.device("cpu"), vram_budget=vram_floor(needs) + one_block, ram_budget=10**12)
    locs = plan.locations("transformer") + plan.locations("transformer_2")
    assert locs.count("vram") == 1 and locs.count("ram") == len(locs) - 1
    assert isinstance(models.text_encoder, HostTextEncoder)  # no room for it next to the experts
    out = models.transformer(**{**inputs(), "encoder_hidden_states": text})[0]
    assert torch.equal(out, ref)
    assert models.streamers["transformer"].stats.copies == plan.locations("transformer").count("ram")


def test_mapped_gguf_pages_can_be_dropped_without_changing_values(tmp_path):
    import gguf

    from engine.memory.host import file_mappings, page_out, read_gguf_mapped

    w = np.random.default_rng(1).standard_normal((64, 4096)).astype(np.float32)  # ~1 MB: many pages
    writer = gguf.GGUFWriter(str(tmp_path / "t.gguf"), arch="wan")
    writer.add_tensor("blocks.0.ffn.0.weight", w)
    writer.add_tensor("blocks.0.ffn.2.weight", gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    sd = read_gguf_mapped(tmp_path / "t.gguf")
    plain, quant = sd["blocks.0.ffn.0.weight"], sd["blocks.0.ffn.2.weight"]
    assert quant.quant_type == gguf.GGMLQuantizationType.Q8_0
    before = (plain.clone(), quant.clone())
    anon = torch.randn(64, 4096)
    anon_before = anon.clone()
    spans = file_mappings()
    assert any(a <= plain.data_ptr() < b for a, b in spans)
    assert not any(a <= anon.data_ptr() < b for a, b in spans)
    page_out([plain, quant, anon], spans)
    # File pages come back from the file; the anonymous tensor was never touched.
    assert torch.equal(plain, before[0]) and torch.equal(quant, before[1])
    assert torch.equal(plain.reshape(64, 4096), torch.from_numpy(w))
    assert torch.equal(anon, anon_before)


@torch.no_grad()
def test_disk_block_reads_its_file_part_through_staging_and_drops_the_pages(tmp_path, monkeypatch):
    """A GGUF expert with a LoRA: a disk block's quantized weights come from the mapped file through a
    staging buffer every forward, its pages are dropped after each read, its LoRA factors stay in RAM."""
    import engine.memory.streaming as streaming
    from engine.memory.host import file_mappings
    from engine.models.loading import load_expert_gguf
    from engine.models.lora import load_lora
    from engine.models.placement import _prepare_block
    from tests.support.engine_helpers import GGUF_TRANSFORMER, write_tiny_gguf_expert

    path, config_dir, _ = write_tiny_gguf_expert(tmp_path)
    dim = GGUF_TRANSFORMER["num_attention_heads"] * GGUF_TRANSFORMER["attention_head_dim"]
    g = torch.Generator().manual_seed(0)
    lora = {"blocks.1.self_attn.q.lora_A.default.weight": torch.randn(8, dim, generator=g) * 0.1,
            "blocks.1.self_attn.q.lora_B.default.weight": torch.randn(dim, 8, generator=g) * 0.1}
    g = torch.Generator().manual_seed(1)
    args = dict(hidden_states=torch.randn(1, 36, 2, 4, 4, generator=g), timestep=torch.tensor([500.0]),
                encoder_hidden_states=torch.randn(1, 8, GGUF_TRANSFORMER["text_dim"], generator=g), return_dict=False)

    reference = load_expert_gguf(path, config_dir, "transformer", torch.float32)
    load_lora(reference, lora, "svi")
    expected = reference(**args)[0]

    model = load_expert_gguf(path, config_dir, "transformer", torch.float32)
    load_lora(model, lora, "svi")
    dropped = []
    real_page_out = streaming.page_out
    monkeypatch.setattr(streaming, "page_out", lambda ts, spans: (dropped.append(list(ts)), real_page_out(ts, spans)))
    streamer = place_model(model, ["vram", "disk"], "cpu", prepare=_prepare_block(torch.float32))
    slot = streamer.slots[1]
    spans = file_mappings()
    file_tensors = [slot.host[k][2] for k in slot.file_idx]
    quantized = [t for _, _, t in slot.host if hasattr(t, "quant_type")]
    assert quantized and {t.data_ptr() for t in quantized} <= {t.data_ptr() for t in file_tensors}
    assert all(any(a <= t.data_ptr() < b for a, b in spans) for t in file_tensors)
    q = model.blocks[1].attn1.to_q
    assert q.lora_down.shape == (8, dim)  # materialized at placement, in memory, not in any file
    assert not any(a <= q.lora_down.data_ptr() < b for a, b in spans)

    dropped.clear()
    for _ in range(2):
        torch.testing.assert_close(model(**args)[0], expected, rtol=0, atol=0)
    file_bytes = sum(t.numel() * t.element_size() for t in file_tensors)
    assert streamer.stats.disk_bytes == 2 * file_bytes
    assert streamer.stats.ram_bytes == 2 * (slot.nbytes - file_bytes)  # LoRA and cast tensors, from RAM
    assert slot.nbytes - file_bytes >= q.lora_down.numel() * 4 + q.lora_up.numel() * 4
    # after each read the block's file pages were dropped again
    ptrs = sorted(t.data_ptr() for t in file_tensors)
    assert [sorted(t.data_ptr() for t in ts) for ts in dropped] == [ptrs, ptrs]
    assert len(streamer._staging) == 2 and streamer._staging[0].numel() >= file_bytes


@torch.no_grad()
def test_planned_block_sizes_count_lora_factors_before_they_exist(tmp_path):
    from engine.memory.planner import expert_sizes
    from engine.models.loading import load_expert_gguf
    from engine.models.lora import load_lora
    from engine.models.lora_linear import materialize_loras
    from engine.models.placement import placed_expert_sizes
    from tests.support.engine_helpers import GGUF_TRANSFORMER, write_tiny_gguf_expert

    path, config_dir, _ = write_tiny_gguf_expert(tmp_path)
    dim = GGUF_TRANSFORMER["num_attention_heads"] * GGUF_TRANSFORMER["attention_head_dim"]
    model = load_expert_gguf(path, config_dir, "transformer", torch.float16)
    plain = expert_sizes("transformer", model)
    lora = {"blocks.0.ffn.2.lora_A.default.weight": torch.zeros(16, GGUF_TRANSFORMER["ffn_dim"], dtype=torch.bfloat16),
            "blocks.0.ffn.2.lora_B.default.weight": torch.zeros(dim, 16, dtype=torch.bfloat16)}
    load_lora(model, lora, "svi")
    planned = placed_expert_sizes("transformer", model, torch.float16)
    lora_bytes = 16 * (GGUF_TRANSFORMER["ffn_dim"] + dim) * 2 + 16 * 4  # fp16 factors + fp32 per-rank scales
    assert planned.block_bytes[0] == plain.block_bytes[0] + lora_bytes
    assert planned.block_bytes[1] == plain.block_bytes[1]
    assert planned.lora_bytes == lora_bytes
    quantized = sum(p.numel() for p in model.blocks[0].parameters() if hasattr(p, "quant_type"))
    assert planned.block_file_bytes[0] == quantized and planned.resident_bytes(0) > lora_bytes
    materialize_loras(model, torch.float16)
    assert expert_sizes("transformer", model).block_bytes == planned.block_bytes  # the plan was exact
