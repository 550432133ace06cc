"""Frozen settings for one story (`GenerationSettings`) and the adapter strengths (`LoraStrengths`).

What to load and where lives in `engine.models.config.EngineConfig`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from storage.errors import BadSetting

# Wan 2.2's default negative prompt (Wan-Video/Wan2.2 `wan/configs/shared_config.py`).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

CHAINING_MODES = ("svi-pro", "last-frame")
QUALITY_LEVELS = {
    # LightX2V 4-step distill: 2 high-noise + 2 low-noise steps, no negative pass.
    "fast": {"num_inference_steps": 4, "guidance_scale": 1.0},
    # Wan 2.2's own I2V setting, for when the speed LoRA is off.
    "quality": {"num_inference_steps": 40, "guidance_scale": 3.5},
}
MAX_FRAMES = 161  # two of Wan's 5 s windows; longer segments leave what the model was trained on
MAX_SIDE = 1280  # Wan 2.2 A14B tops out at 720p


@dataclass(frozen=True)
class GenerationSettings:
    seed: int = 0
    num_frames: int = 81  # per segment; the VAE packs 4 frames per latent after the first, so 4k+1
    height: int = 480  # landscape size; portrait photos swap height and width
    width: int = 832
    num_inference_steps: int = 4  # LightX2V distill: 2 high-noise + 2 low-noise
    guidance_scale: float = 1.0  # 1 skips the negative pass
    boundary_ratio: float = 0.9  # t >= boundary_ratio * 1000 goes to the high-noise expert (Wan's I2V config)
    shift: float = 5.0  # flow-matching timestep shift used by Wan I2V at 480p
    fps: int = 16  # Wan's training frame rate: 81 frames ~ 5 s
    chaining: str = "svi-pro"  # or "last-frame": the last decoded frame seeds the next segment
    negative_prompt: str = WAN_NEGATIVE_PROMPT

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `BadSetting` naming the first bad value and its limit."""
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63 - 1000:
            raise BadSetting(f"seed must be an integer in [0, 2**63 - 1000) but is {self.seed!r}")
        if not isinstance(self.num_frames, int) or self.num_frames < 5 or (self.num_frames - 1) % 4:
            raise BadSetting(f"num_frames must be 4k+1 and at least 5 (e.g. 81) but is {self.num_frames!r}")
        if self.num_frames > MAX_FRAMES:
            raise BadSetting(f"num_frames is {self.num_frames}; the limit is {MAX_FRAMES}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 16 or v % 16:
                raise BadSetting(f"{name} has to be a positive multiple of 16 but is {v!r}")
            if v > MAX_SIDE:
                raise BadSetting(f"{name} is {v}; the limit is {MAX_SIDE}")
        if not isinstance(self.num_inference_steps, int) or not 1 <= self.num_inference_steps <= 100:
            raise BadSetting(f"num_inference_steps must be in [1, 100] but is {self.num_inference_steps!r}")
        if not 1.0 <= float(self.guidance_scale) <= 20.0:
            raise BadSetting(f"guidance_scale must be in [1, 20] but is {self.guidance_scale!r}")
        if not 0.0 <= float(self.boundary_ratio) <= 1.0:
            raise BadSetting(f"boundary_ratio must be in [0, 1] but is {self.boundary_ratio!r}")
        if not 0.0 < float(self.shift) <= 20.0:
            raise BadSetting(f"shift must be in (0, 20] but is {self.shift!r}")
        if not isinstance(self.fps, int) or not 1 <= self.fps <= 60:
            raise BadSetting(f"fps must be an integer in [1, 60] but is {self.fps!r}")
        if self.chaining not in CHAINING_MODES:
            raise BadSetting(f"chaining must be one of {CHAINING_MODES} but is {self.chaining!r}")
        if not isinstance(self.negative_prompt, str):
            raise BadSetting(f"negative_prompt must be text but is {self.negative_prompt!r}")

    @property
    def num_latent_frames(self) -> int:
        return (self.num_frames - 1) // 4 + 1

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationSettings":
        """Build from a stored dict; unknown keys and wrong types raise `BadSetting`."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise BadSetting(f"unknown setting(s) {unknown}; known settings are {sorted(known)}")
        kwargs = {}
        for key, value in d.items():
            default = getattr(cls, key)
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not type(default):
                raise BadSetting(
                    f"setting {key!r} must be {type(default).__name__} but is {value!r}"
                )
            kwargs[key] = value
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_quality(self, level: str) -> "GenerationSettings":
        """Return a copy with the step count and guidance of `level` ('fast' or 'quality')."""
        if level not in QUALITY_LEVELS:
            raise BadSetting(f"quality must be one of {sorted(QUALITY_LEVELS)} but is {level!r}")
        return GenerationSettings(**{**self.to_dict(), **QUALITY_LEVELS[level]})

    def oriented(self, portrait: bool) -> "GenerationSettings":
        """Return a copy whose (height, width) match the photo: landscape keeps width >= height."""
        long, short = max(self.height, self.width), min(self.height, self.width)
        h, w = (long, short) if portrait else (short, long)
        return GenerationSettings(**{**self.to_dict(), "height": h, "width": w})


@dataclass(frozen=True)
class LoraStrengths:
    """Per-expert adapter weights. SVI's own workflow runs the high-noise speed LoRA at 0.5."""

    svi_high: float = 1.0
    svi_low: float = 1.0
    lightx2v_high: float = 1.0
    lightx2v_low: float = 1.0
