"""Load a preset's models once and keep them warm; every weight placement goes through `place_models`.

Real presets read the GGUF experts with diffusers' single-file loader and the packaged Wan 2.2 configs,
so nothing but the preset's own files is ever fetched.
"""
from __future__ import annotations

import gc
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import EngineConfig
from .presets import PRESETS, Preset, get_preset, wan22_config_dir

log = logging.getLogger(__name__)

REAL_MAX_SEQUENCE_LENGTH = 512  # UMT5 context length Wan was trained with

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(eq=False)
class Models:
    transformer: Any  # high-noise expert, runs while t >= boundary
    transformer_2: Any  # low-noise expert
    vae: Any
    text_encoder: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype  # compute dtype of the experts and the text encoder
    preset: str
    label: str  # e.g. "tiny (random weights)"; shown to users
    max_sequence_length: int = REAL_MAX_SEQUENCE_LENGTH
    is_random_weights: bool = False
    plan: Any = None  # engine.memory.planner.Plan on CUDA: where each block of each expert lives
    streamers: Any = None  # expert name -> engine.memory.streaming.BlockStreamer
    text_cache: Any = None  # engine.models.text_cache.TextCache: prompt embeddings on disk, None to always encode
    place_pending: Any = None  # callable placing the experts, while load_models leaves the GPU to the text encoder
    adapters: frozenset = frozenset()  # LoRA adapters loaded on the experts, e.g. {"svi", "lightx2v"}
    fast: Any = None  # engine.models.fast.FastPath once placed: weights format, attention kernel, compiled blocks

    def ensure_placed(self) -> None:
        """Place the experts if `load_models` deferred it until the first prompts were encoded."""
        if self.place_pending is not None:
            place, self.place_pending = self.place_pending, None
            place()


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(device: torch.device, name: str | None) -> torch.dtype:
    """fp32 on the CPU; bf16 on Ampere and newer; fp16 before (the T4 has no bf16 tensor cores)."""
    if name is not None:
        return DTYPES[name]
    if device.type != "cuda":
        return torch.float32
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def load_expert_gguf(path: Path, config_dir: Path, subfolder: str, compute_dtype: torch.dtype):
    """Load one Wan expert from a GGUF file with original Wan key names.

    `config_dir/subfolder/config.json` must describe the file: auto-detection would pick the Wan 2.1 I2V
    config, whose CLIP layers 2.2 lacks ("Cannot copy out of meta tensor", diffusers #12009).
    """
    from diffusers import GGUFQuantizationConfig, WanTransformer3DModel

    from ..memory.host import read_gguf_mapped

    return WanTransformer3DModel.from_single_file(
        read_gguf_mapped(path),  # views of the mapped file: no 9 GB copy in RAM before placement
        config=str(config_dir),
        subfolder=subfolder,
        quantization_config=GGUFQuantizationConfig(compute_dtype=compute_dtype),
        torch_dtype=compute_dtype,
        local_files_only=True,
    ).eval()


def place_models(models: Models, device: torch.device, config: EngineConfig | None = None) -> None:
    """Put every component where it runs; this is the one place weights move.

    On CUDA the memory planner decides, block by block, which expert weights stay in VRAM and which
    stream in from pinned RAM (or the file) within the budgets of `config`; on the CPU all stay put.
    """
    from .fast import choose_weights, finish_fast_path, pick_attention
    from .text_encoder import LazyTextEncoder

    settings = get_preset(models.preset).settings if models.preset in PRESETS else None
    # the attention self-test runs first, while the VRAM the experts will take is still free
    attention = pick_attention(models, device, config, settings or get_preset("tiny").settings)
    weights, weights_reason = "gguf", "no GPU: GGUF (or plain) weights as loaded"
    if device.type == "cuda":
        from .placement import place_by_plan, plan_models

        vram, ram = _budgets(config)
        weights, weights_reason, plan = choose_weights(
            config.weights if config else "auto", device,
            lambda: plan_models(models, device, vram, ram, settings, weights="fp8"))
        models.plan = place_by_plan(models, device, vram_budget=vram, ram_budget=ram, settings=settings,
                                    weights=weights, plan=plan)
    else:
        if config is not None and config.weights == "fp8":
            from storage.errors import BadSetting

            raise BadSetting("SVIBOT_WEIGHTS=fp8 needs a CUDA GPU with FP8 tensor cores (sm_89 or newer); "
                             f"this device is {device}")
        from .lora_linear import materialize_loras

        for name in ("transformer", "transformer_2", "vae", "text_encoder"):
            if not isinstance(getattr(models, name), LazyTextEncoder):
                getattr(models, name).to(device)
        for name in ("transformer", "transformer_2"):
            materialize_loras(getattr(models, name))  # the mapped LoRA files are read here, once
    models.fast = finish_fast_path(models, device, config, weights, weights_reason, attention)
    models.device = device
    if isinstance(models.text_encoder, LazyTextEncoder):
        models.text_encoder.experts_placed = True  # from now on it streams through the VRAM left free


def _budgets(config: EngineConfig | None) -> tuple[int | None, int | None]:
    from ..memory.planner import GIB

    gib = lambda v: None if v is None else int(v * GIB)
    return (gib(config.vram_budget_gib), gib(config.ram_budget_gib)) if config else (None, None)


def check_fit(models: Models, device: torch.device, config: EngineConfig, preset: Preset):
    """Plan now, at start-up, and warn with the numbers if blocks would be read from disk every segment.

    Returns the plan, or None when the budgets cannot hold the models at all (placement says why later).
    """
    from ..memory.planner import PlacementError, disk_warning
    from .fit import largest_fitting
    from .placement import plan_models

    vram, ram = _budgets(config)
    try:
        plan = plan_models(models, device, vram, ram, settings=preset.settings)
    except PlacementError as err:
        log.warning("preset %s cannot be placed under these budgets: %s", preset.name, err)
        return None
    if plan.bytes_at("disk"):
        best = largest_fitting(plan.vram_budget, plan.ram_budget, use_loras=config.use_loras)
        log.warning("preset %s: %s; %s", preset.name, disk_warning(plan),
                    f"the largest preset that fits these budgets is {best} (--preset {best})" if best
                    else "no preset fits these budgets without disk reads")
    return plan


def free_memory() -> None:
    """Drop what the last stage left behind before the next one allocates."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _cast_keeping_fp32_modules(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast like diffusers' loaders do: rope, time embedder, norms and modulation stay fp32."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, param in model.named_parameters():
        if not keep.intersection(name.split(".")):
            param.data = param.data.to(dtype)


def _build_tiny(preset: Preset, device: torch.device, dtype: torch.dtype) -> Models:
    from .tiny import TINY_MAX_SEQUENCE_LENGTH, build_tiny_components

    parts = build_tiny_components()
    if dtype != torch.float32:
        parts["text_encoder"].to(dtype)
        for name in ("transformer", "transformer_2"):
            _cast_keeping_fp32_modules(parts[name], dtype)
    return Models(
        **parts, device=torch.device("cpu"), dtype=dtype, preset=preset.name, label=preset.label,
        max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, is_random_weights=True,
    )


def _build_real(config: EngineConfig, preset: Preset, dtype: torch.dtype, paths: dict[str, Path]) -> Models:
    import tempfile

    from transformers import AutoTokenizer

    from ..config import LoraStrengths
    from .lora import apply_loras
    from .text_encoder import LazyTextEncoder
    from .vae import load_vae

    configs = preset.config_dir or wan22_config_dir()
    high = load_expert_gguf(paths["high"], configs, "transformer", dtype)
    low = load_expert_gguf(paths["low"], configs, "transformer_2", dtype)
    vae = load_vae(paths["vae"], configs, dtype)  # checks the file's keys against the packaged config
    # UMT5-XXL (11 GB) never sits in host RAM: it is read from its files when prompts miss the cache
    offload = (config.cache_dir or Path(tempfile.gettempdir()) / "svibot") / "text_encoder_offload"
    device = resolve_device(config.device)
    text_encoder = LazyTextEncoder(paths["text_encoder"], device, dtype, offload)
    tokenizer = AutoTokenizer.from_pretrained(paths["tokenizer"])
    models = Models(
        transformer=high, transformer_2=low, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        device=device, dtype=dtype, preset=preset.name, label=preset.label,  # experts follow at ensure_placed
    )
    if config.use_loras:  # each job then weights them for its recipe (engine.svi.generate_story)
        models.adapters = apply_loras(models, paths, LoraStrengths())
    return models


_CACHE: dict[tuple, Models] = {}
_CACHE_LOCK = threading.Lock()


def load_models(config: EngineConfig) -> Models:
    """Load (or return the already loaded) models for `config`; a new key unloads the old models."""
    preset = get_preset(config.preset)
    device = resolve_device(config.device)
    dtype = resolve_dtype(device, config.dtype)
    key = (config.preset, config.file_overrides, str(device), str(dtype), config.use_loras,
           str(config.models_dir), str(config.cache_dir), config.attention, config.compile, config.weights)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        paths = None
        if preset.files is not None:
            from .download import local_preset_files

            # a missing file fails here, before the warm models are dropped
            paths = local_preset_files(preset.files.with_overrides(config.file_overrides), config.models_dir)
        _CACHE.clear()  # one preset at a time: two A14B presets never fit together
        free_memory()
        log.info("loading preset %s on %s in %s", preset.label, device, dtype)
        models = _build_tiny(preset, device, dtype) if preset.files is None else _build_real(config, preset, dtype, paths)
        if preset.files is None:
            place_models(models, device, config)
        else:
            # The first job's prompts are encoded with the whole GPU free; `ensure_placed` follows.
            models.place_pending = lambda: place_models(models, device, config)
            log.info("experts are placed after the first job's prompts are encoded")
            if device.type == "cuda" or None not in _budgets(config):
                check_fit(models, device, config, preset)
            if config.cache_dir is not None:
                from .text_cache import TextCache

                files = preset.files.with_overrides(config.file_overrides)
                encoder_id = f"{files.text_encoder_repo}/{files.text_encoder_folder}:{dtype}@{models.max_sequence_length}"
                models.text_cache = TextCache(Path(config.cache_dir) / "text", encoder_id)
        _CACHE[key] = models
        return models


def unload_models() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
    free_memory()
