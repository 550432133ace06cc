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
    assert streamer.stats.disk_bytes == sum(p.numel() * p.element_size() for p in model.blocks[2].parameters())
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
    from engine.memory.planner import MemoryNeeds, expert_sizes, module_bytes, vram_floor
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
    needs = MemoryNeeds(
        experts=(expert_sizes("transformer", models.transformer), expert_sizes("transformer_2", models.transformer_2)),
        vae_bytes=module_bytes(models.vae), text_encoder_bytes=0, activation_bytes=plan.needs.activation_bytes,
    )
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
