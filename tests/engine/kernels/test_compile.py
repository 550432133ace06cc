"""Regional compilation: SVIBOT_COMPILE parses strictly, the CPU stays eager, and compiled blocks keep the
block streamer's hooks outside the compiled code: one graph for every block, the same output, copies
still counted; a block that fails to compile runs eagerly."""
from __future__ import annotations

import pytest
import torch

from engine.kernels.compile import compile_blocks, compile_failure, compile_wanted, parse_compile, repeated_blocks
from engine.memory.streaming import BlockStreamer
from engine.models.tiny import TINY_TRANSFORMER, build_tiny_transformer
from storage.errors import BadSetting


def inputs():
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, 36, 3, 8, 8, generator=g), timestep=torch.tensor([600.0]),
                encoder_hidden_states=torch.randn(1, 8, 32, generator=g), return_dict=False)


def test_parse_compile_and_where_it_applies():
    assert parse_compile(None) == "auto" and parse_compile(" OFF ") == "off"
    with pytest.raises(BadSetting, match="SVIBOT_COMPILE must be one of auto, off but is 'max'"):
        parse_compile("max")
    assert compile_wanted("auto", torch.device("cpu"))[0] is False
    assert compile_wanted("off", torch.device("cuda"))[0] is False
    on, why = compile_wanted("auto", torch.device("cuda"))
    assert on and "cold start" in why


def test_compiled_blocks_share_one_graph_and_streaming_hooks_stay_eager():
    model = build_tiny_transformer(0, **dict(TINY_TRANSFORMER, num_layers=4))
    kw = inputs()
    with torch.inference_mode():
        ref = model(**kw)[0]
    streamer = BlockStreamer(model.blocks, ["vram", "ram", "vram", "ram"], "cpu")
    graphs = []

    def backend(gm, example_inputs):  # counts graphs, runs them as traced
        graphs.append(gm)
        return gm.forward

    assert compile_blocks(model, backend=backend) == 4 == len(repeated_blocks(model))
    with torch.inference_mode():
        out = model(**kw)[0]
        again = model(**kw)[0]
    assert torch.equal(out, ref) and torch.equal(again, ref)
    assert streamer.stats.copies == 4  # the two streamed blocks were copied in on both forwards
    # resident blocks and streamed copies (inference tensors) are the only two variants
    assert 1 <= len(graphs) <= 2, len(graphs)
    assert compile_failure(model) is None


def test_a_block_that_fails_to_compile_runs_eagerly(caplog):
    model = build_tiny_transformer(0)
    kw = inputs()
    with torch.inference_mode():
        ref = model(**kw)[0]

    def broken(gm, example_inputs):
        raise RuntimeError("no Triton for this GPU")

    compile_blocks(model, backend=broken)
    with torch.inference_mode(), caplog.at_level("WARNING", logger="engine.kernels.compile"):
        out = model(**kw)[0]
    assert torch.equal(out, ref)
    assert "no Triton for this GPU" in compile_failure(model)
    assert "running it eagerly" in caplog.text


def test_a_gguf_expert_with_loras_compiles_through_aot_autograd_and_matches_eager(tmp_path):
    """diffusers' GGUFParameter subclass broke tracing (KeyError: None from AOT autograd, the path Inductor
    takes; a RecursionError on CUDA under torch 2.11): compiled blocks see plain bytes, same numbers."""
    from types import SimpleNamespace

    from engine.config import LoraStrengths
    from engine.models.loading import load_expert_gguf
    from engine.models.lora import load_lora, set_strengths
    from tests.engine.models.test_lora_adapters import GDIM, comfy_lora_with_alpha, svi_official_lora
    from tests.support.engine_helpers import GGUF_TRANSFORMER, write_tiny_gguf_expert

    path, config_dir, _ = write_tiny_gguf_expert(tmp_path)
    ffn = GGUF_TRANSFORMER["ffn_dim"]
    expert = load_expert_gguf(path, config_dir, "transformer", torch.float32)
    for name, lora in (("svi", svi_official_lora(GDIM, ffn)), ("lightx2v", comfy_lora_with_alpha(4, GDIM, ffn))):
        load_lora(expert, lora, name)
    both = SimpleNamespace(transformer=expert, transformer_2=None)
    g = torch.Generator().manual_seed(0)
    kw = dict(hidden_states=torch.randn(1, 36, 3, 8, 8, generator=g), timestep=torch.tensor([600.0]),
              encoder_hidden_states=torch.randn(1, 8, GGUF_TRANSFORMER["text_dim"], generator=g), return_dict=False)
    recipes = (LoraStrengths(svi_high=1.0, lightx2v_high=0.5), LoraStrengths(svi_high=1.0, lightx2v_high=0.0),
               LoraStrengths())  # fast, quality, every LoRA off (the base GGUF linears alone)
    eager = []
    with torch.inference_mode():
        for strengths in recipes:
            set_strengths(both, strengths)
            eager.append(expert(**kw)[0])
    BlockStreamer(expert.blocks, ["vram", "ram"], "cpu")
    compile_blocks(expert, backend="aot_eager")
    with torch.inference_mode():
        for strengths, ref in zip(recipes, eager):
            set_strengths(both, strengths)  # scale buffers are graph inputs: a new recipe needs no recompile
            assert torch.allclose(expert(**kw)[0], ref, rtol=1e-5, atol=1e-6)
    assert compile_failure(model=expert) is None
    assert not torch.equal(eager[0], eager[1]) and not torch.equal(eager[1], eager[2])
    weight = expert.blocks[1].attn1.to_q.weight
    assert type(weight).__name__ == "GGUFParameter"  # outside a call, placement and streaming see GGUF as before
