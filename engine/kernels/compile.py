"""Regional compilation: the repeated transformer block compiled once, reused by all 40 blocks of both experts.

diffusers names the repeated block class in `_repeated_blocks` ("WanTransformerBlock") and its
`compile_repeated_blocks` compiles each such module's `_call_impl`, forward hooks included. The block
streamer's hooks (CUDA events, side-stream copies, swapping parameters) must stay eager, so the engine
compiles the same modules' `forward` instead: the hooks run around the compiled code, and the
parameters they swap in are graph inputs of the same shapes, so nothing recompiles. Dynamo keys its
cache on the shared code object, so the first block's compile serves every later block.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from storage.errors import BadSetting

from .gguf_plain import gguf_linears, with_plain_weights

log = logging.getLogger(__name__)

CHOICES = ("auto", "off")


def parse_compile(value: str | None) -> str:
    """SVIBOT_COMPILE: auto (compile on CUDA) or off."""
    v = (value or "auto").strip().lower()
    if v not in CHOICES:
        raise BadSetting(f"SVIBOT_COMPILE must be one of {', '.join(CHOICES)} but is {value!r}")
    return v


def compile_wanted(setting: str, device: torch.device) -> tuple[bool, str]:
    """(compile?, why) for a parsed SVIBOT_COMPILE value on `device`."""
    if setting == "off":
        return False, "off (SVIBOT_COMPILE=off)"
    if device.type != "cuda":
        return False, "off on the CPU (Inductor's CPU code is not what the engine is tuned for; eager is exact)"
    return True, "regional: the repeated block's forward, compiled at its first call (counted in the cold start)"


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules diffusers marks as repeated (`_repeated_blocks`), in model order."""
    names = tuple(getattr(model, "_repeated_blocks", None) or ())
    if not names:
        raise ValueError(f"{type(model).__name__} names no repeated blocks (`_repeated_blocks` is empty)")
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(model).__name__} holds none of its repeated blocks {names}")
    return blocks


def compile_blocks(model: nn.Module, **compile_kwargs) -> int:
    """Compile each repeated block's forward in place (hooks stay outside); returns how many.

    `compile_kwargs` go to `torch.compile` (tests pass backend="eager" to trace without Inductor).
    """
    compile_kwargs.setdefault("dynamic", False)  # one segment size per story: static shapes, best kernels
    blocks = repeated_blocks(model)
    state = {"failed": None}  # shared by the blocks: one failure to compile sends all of them back to eager
    for block in blocks:
        if getattr(block, "_svibot_compiled", False):
            continue
        # An instance attribute wins over the class's forward; `_call_impl` (and its hooks) stays eager.
        # GGUF weights enter the compiled code as plain bytes (gguf_plain.py), also when it runs eagerly.
        guarded = _guarded(block.forward, torch.compile(block.forward, **compile_kwargs), state)
        block.forward = with_plain_weights(guarded, gguf_linears(block))
        block.forward.compile_state = state
        block._svibot_compiled = True
    # Both experts share one code object: raise the recompile limit above the blocks' few variants
    # (resident, streamed, FP8 or GGUF linears) so none falls back to eager.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    return len(blocks)


def _compile_errors() -> tuple[type, ...]:
    from torch._dynamo.exc import TorchDynamoException

    return (TorchDynamoException, RecursionError, NotImplementedError)


def _guarded(eager, compiled, state: dict):
    """Run `compiled`; if tracing or compiling fails, log it once and run `eager` from then on.

    A block's forward has no side effects, so running it again eagerly after a failed compile is exact.
    """

    def forward(*args, **kwargs):
        if state["failed"] is None:
            try:
                return compiled(*args, **kwargs)
            except _compile_errors() as err:
                lines = [x.strip() for x in str(err).splitlines() if x.strip()][:2]  # dynamo puts the cause second
                state["failed"] = f"{type(err).__name__}: {' '.join(lines)[:300]}"
                log.warning("compiling the repeated block failed, running it eagerly from now on: %s", state["failed"])
        return eager(*args, **kwargs)

    forward.compile_state = state
    return forward


def compile_failure(model: nn.Module) -> str | None:
    """Why the blocks of `model` fell back to eager, or None."""
    for block in repeated_blocks(model):
        state = getattr(block.__dict__.get("forward"), "compile_state", None)
        if state and state["failed"]:
            return state["failed"]
    return None


def is_compiled(block: nn.Module) -> bool:
    return bool(getattr(block, "_svibot_compiled", False))
