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
