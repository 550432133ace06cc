"""Model presets: which repos and files make up each quantisation of Wan 2.2 I2V A14B, plus `tiny`.

Repos and filenames are those of the public releases (see the README); every one can be overridden through `EngineConfig.file_overrides`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path

from ..config import GenerationSettings

GGUF_REPO = "QuantStack/Wan2.2-I2V-A14B-GGUF"
DIFFUSERS_REPO = "Wan-AI/Wan2.2-I2V-A14B-Diffusers"  # text_encoder/ and tokenizer/
COMFY_REPO = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"  # the Wan 2.1 VAE, shared by 2.2 A14B
SVI_REPO = "vita-video-gen/svi-model"
LIGHTX2V_REPO = "lightx2v/Wan2.2-Distill-Loras"

GB = 1_000_000_000


@dataclass(frozen=True)
class ModelFiles:
    """Where each part lives: a repo and a file (or a folder, for the sharded text encoder)."""

    high_repo: str = GGUF_REPO
    high_file: str = ""
    low_repo: str = GGUF_REPO
    low_file: str = ""
    vae_repo: str = COMFY_REPO
    vae_file: str = "split_files/vae/wan_2.1_vae.safetensors"
    text_encoder_repo: str = DIFFUSERS_REPO
    text_encoder_folder: str = "text_encoder"
    tokenizer_repo: str = DIFFUSERS_REPO
    tokenizer_folder: str = "tokenizer"
    svi_high_repo: str = SVI_REPO
    svi_high_file: str = "version-2.0/SVI_Wan2.2-I2V-A14B_high_noise_lora_v2.0_pro.safetensors"
    svi_low_repo: str = SVI_REPO
    svi_low_file: str = "version-2.0/SVI_Wan2.2-I2V-A14B_low_noise_lora_v2.0_pro.safetensors"
    lightx2v_high_repo: str = LIGHTX2V_REPO
    lightx2v_high_file: str = "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors"
    lightx2v_low_repo: str = LIGHTX2V_REPO
    lightx2v_low_file: str = "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors"

    def with_overrides(self, overrides: tuple[tuple[str, str], ...]) -> "ModelFiles":
        return replace(self, **dict(overrides))

    def items(self) -> list[tuple[str, str, str]]:
        """(part, repo, file-or-folder) for every part, in download order."""
        names = [f.name for f in fields(self)]
        parts = [n[: -len("_repo")] for n in names if n.endswith("_repo")]
        out = []
        for part in parts:
            target = getattr(self, f"{part}_file", None) or getattr(self, f"{part}_folder")
            out.append((part, getattr(self, f"{part}_repo"), target))
        return out


FOLDER_PARTS = ("text_encoder", "tokenizer")  # fetched as whole folders, not single files


@dataclass(frozen=True)
class Preset:
    name: str
    files: ModelFiles | None  # None: built in code (tiny)
    sizes: dict  # part -> approximate bytes, for the disk check and for display
    settings: GenerationSettings  # defaults for this preset
    is_random_weights: bool = False
    config_dir: Path | None = None  # None: the packaged Wan 2.2 I2V A14B configs

    @property
    def total_bytes(self) -> int:
        return int(sum(self.sizes.values()))

    @property
    def label(self) -> str:
        return f"{self.name} (random weights)" if self.is_random_weights else f"Wan 2.2 I2V A14B {self.name.upper()}"


def wan22_config_dir() -> Path:
    """The packaged Wan 2.2 I2V A14B configs (transformer/, transformer_2/, vae/)."""
    return Path(str(resources.files("engine.models") / "configs" / "wan22_i2v_a14b"))


def _gguf_preset(name: str, expert_gb: float) -> Preset:
    quant = name.upper()
    files = ModelFiles(
        high_file=f"HighNoise/Wan2.2-I2V-A14B-HighNoise-{quant}.gguf",
        low_file=f"LowNoise/Wan2.2-I2V-A14B-LowNoise-{quant}.gguf",
    )
    sizes = {
        "high": expert_gb * GB,
        "low": expert_gb * GB,
        "vae": 0.25 * GB,
        "text_encoder": 11.4 * GB,  # UMT5-XXL in bf16
        "tokenizer": 0.02 * GB,
        "svi_high": 1_226_928_552,  # rank 128, 800 tensors: the size the release lists
        "svi_low": 1_226_928_552,
        "lightx2v_high": 0.62 * GB,  # rank 64: half the rank-128 SVI file
        "lightx2v_low": 0.62 * GB,
    }
    return Preset(name=name, files=files, sizes=sizes, settings=GenerationSettings())


# Expert sizes from the QuantStack listing (Q4_K_M 9.65 GB, Q3_K_M 7.18 GB); the others are estimates.
PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        files=None,
        sizes={},
        # 13 frames -> 4 latents at 64x112: small enough for a 3-prompt story in seconds on 2 CPU cores.
        settings=GenerationSettings(num_frames=13, height=64, width=112, num_inference_steps=4),
        is_random_weights=True,
    ),
    "q3_k_m": _gguf_preset("q3_k_m", 7.18),
    "q4_k_s": _gguf_preset("q4_k_s", 8.75),
    "q4_k_m": _gguf_preset("q4_k_m", 9.65),
    "q5_k_m": _gguf_preset("q5_k_m", 10.8),
    "q6_k": _gguf_preset("q6_k", 12.0),
    "q8_0": _gguf_preset("q8_0", 15.4),
}


def get_preset(name: str) -> Preset:
    from storage.errors import BadSetting

    if name not in PRESETS:
        raise BadSetting(f"preset must be one of {sorted(PRESETS)} but is {name!r}")
    return PRESETS[name]
