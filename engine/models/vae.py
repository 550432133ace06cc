"""Load the Wan 2.1 VAE from one safetensors file, in original Wan or diffusers key names.

The real presets use Comfy-Org's repackaged `wan_2.1_vae.safetensors`, which keeps the key names of Wan's
own `wan/modules/vae.py` (`encoder.downsamples.0.residual.0.gamma`, `decoder.upsamples.*`, `conv1`, ...);
diffusers' single-file loader renames them. That loader only logs a warning for keys it cannot place
and leaves any weight the file lacks on the meta device, which surfaces later as "Cannot copy out of
meta tensor" with no file named: the key sets are compared first and a mismatch raises `EngineError`
naming the file and the keys.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import EngineError

_SHOWN_KEYS = 5  # how many mismatched key names an error message lists


def _file_keys(path: Path) -> set[str]:
    """Tensor names from the safetensors header; no tensor data is read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    except Exception as e:  # safetensors raises its own SafetensorError for a file that is not safetensors
        raise EngineError(f"VAE file {path} is not a readable safetensors file: {e}") from e


def _expected_keys(config_dir: Path) -> set[str]:
    """State-dict names of the VAE that `config_dir/vae/config.json` describes, built without weights."""
    from diffusers import AutoencoderKLWan

    config = AutoencoderKLWan.load_config(str(config_dir), subfolder="vae", local_files_only=True)
    with torch.device("meta"):
        model = AutoencoderKLWan.from_config(config)
    return set(model.state_dict())


def _as_diffusers_keys(file_keys: set[str], expected: set[str]) -> set[str]:
    """The names the file's tensors get inside diffusers, deciding on conversion as diffusers does."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    if file_keys == expected:  # already diffusers names: the loader then skips its converter
        return file_keys
    return set(convert_wan_vae_to_diffusers(dict.fromkeys(file_keys)))  # the converter only renames keys


def _short(keys: set[str]) -> str:
    names = sorted(keys)
    more = f" (+{len(names) - _SHOWN_KEYS} more)" if len(names) > _SHOWN_KEYS else ""
    return ", ".join(names[:_SHOWN_KEYS]) + more


def check_vae_keys(path: Path, config_dir: Path) -> None:
    """Raise `EngineError` unless the file holds exactly the weights of the configured VAE."""
    expected = _expected_keys(config_dir)
    converted = _as_diffusers_keys(_file_keys(path), expected)
    missing, unexpected = expected - converted, converted - expected
    if missing or unexpected:
        raise EngineError(
            f"VAE file {path} does not match the Wan VAE configured in {config_dir / 'vae'}: "
            f"{len(missing)} of its {len(expected)} weights are missing ({_short(missing)}) and "
            f"{len(unexpected)} keys of the file are unknown ({_short(unexpected)})"
        )


def load_vae(path: Path, config_dir: Path, dtype: torch.dtype):
    """`AutoencoderKLWan` from a single file, configured by `config_dir/vae/config.json` (never the Hub).

    Passing `config` skips diffusers' auto-detection, which would fetch the Wan-AI 2.1 T2V repo's config.
    """
    from diffusers import AutoencoderKLWan

    check_vae_keys(path, config_dir)
    return AutoencoderKLWan.from_single_file(
        str(path), config=str(config_dir), subfolder="vae", torch_dtype=dtype, local_files_only=True
    ).eval()
