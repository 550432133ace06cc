"""The LoRA-carrying expert's forward against the unfused fp32 reference, at full size.

reference: every linear computes x (deq(W) + sum_i s_i B_i A_i)^T + b in fp32 (TF32 off).
weight side: the engine's own path in bf16 and fp16 (dequantize, add the LoRA product in place, one matmul).
bar: the same reference weights quantized again to each tensor's GGUF type and decoded, in fp32:
the error the file's own quantization has on these weights (and what merging the LoRAs into the
GGUF file would cost).
"""
from __future__ import annotations

import time

import torch

from engine.models.lora_linear import LoraLinear, lora_linears


def _set_precision(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Run the expert in `dtype` as the engine would: quantized weights stay, LoRA factors and the
    non-quantized weights cast (modules diffusers keeps in fp32 stay fp32 below fp32)."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        if hasattr(module, "compute_dtype") and not isinstance(module, LoraLinear):
            module.compute_dtype = dtype
        for pname, p in list(module._parameters.items()):
            if p is None or hasattr(p, "quant_type") or not p.is_floating_point():
                continue
            target = torch.float32 if keep.intersection(f"{name}.{pname}".split(".")) else dtype
            module._parameters[pname] = torch.nn.Parameter(p.data.to(target), requires_grad=False)
        for bname in ("lora_down", "lora_up", "lora_bias"):  # other buffers (RoPE) stay as the engine has them
            b = module._buffers.get(bname)
            if b is not None:
                module._buffers[bname] = b.to(dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@torch.inference_mode()
def check(model: torch.nn.Module, device: torch.device, text_dim: int, tokens_hw=(30, 52)) -> dict:
    """Forward errors of the weight-side path (bf16, fp16) and of GGUF requantization, vs fp32."""
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    from bench.requantize import requantize

    started = time.perf_counter()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    g = torch.Generator(device).manual_seed(3)
    h, w = tokens_hw
    x = torch.randn(1, 36, 21, h, w, device=device, generator=g)  # (B, C, T, h, w)
    text = torch.randn(1, 512, text_dim, device=device, generator=g)
    t = torch.tensor([500.0], device=device)

    def run(dtype):
        _set_precision(model, dtype)
        return model(hidden_states=x.to(dtype), timestep=t, encoder_hidden_states=text.to(dtype), return_dict=False)[0].float()

    out = {"tokens": 21 * h * w // 4, "lora_linears": len(lora_linears(model))}
    ref = run(torch.float32)
    for dtype in (torch.bfloat16, torch.float16):
        got = run(dtype)
        out[f"weight_side_{str(dtype)[6:]}"] = _rel(got, ref)
        out[f"finite_{str(dtype)[6:]}"] = bool(got.isfinite().all())
    # the bar: merge each LoRA into its weight and quantize it again to the file's type
    _set_precision(model, torch.float32)
    for _, m in lora_linears(model):
        wq = m.base_layer.weight
        if not hasattr(wq, "quant_type"):
            continue
        lo, hi = 0, m.total_rank
        merged = dequantize_gguf_tensor(wq).float()  # (out, in)
        merged += (m.lora_up[:, lo:hi].float() * m.lora_scale[lo:hi]) @ m.lora_down[lo:hi].float()
        m.base_layer.weight = GGUFParameter(requantize(merged, wq.quant_type), quant_type=wq.quant_type)
        m.set_strengths({})  # the LoRA now lives in the quantized weight
    merged_out = model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0].float()
    out["requantized_merge"] = _rel(merged_out, ref)
    out["within_quantization_error"] = max(out["weight_side_bfloat16"], out["weight_side_float16"]) < out["requantized_merge"]
    out["seconds"] = time.perf_counter() - started
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return out
