"""Frozen settings for one story (`GenerationSettings`), the sampling recipes a job picks from (`RECIPES`)
and the adapter strengths (`LoraStrengths`).

What to load and where lives in `engine.models.config.EngineConfig`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from storage.errors import BadSetting
from storage.options import COLOR_MATCH_MODES, check_loop_strength

# Wan 2.2's default negative prompt (Wan-Video/Wan2.2 `wan/configs/shared_config.py`).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

CHAINING_MODES = ("svi-pro", "last-frame")
# Frames dropped at the start of every segment after the first, by chaining mode:
# - svi-pro: latent 0 of a new clip re-creates the anchor photo (1 frame) and latent 1, the carried last latent
#   of the previous clip, re-creates its last 4 frames, so frames 0..4 are dropped. SVI's README runs
#   `inference_svi_2.0_pro.py --num_overlap_frame 5` (vita-epfl/Stable-Video-Infinity, branch svi_wan22,
#   README.md); the script's own argparse default is 4, which would keep one repeated frame at each seam.
# - last-frame: only frame 0 repeats the carried frame, as in SVI 2.0's `inference_svi_2.0.py`
#   (`video_frames[1:]`) and its published ComfyUI workflows.
SEAM_FRAMES = {"svi-pro": 5, "last-frame": 1}
# Frames dropped at the end of a loop's last segment: those that show the first frame again, so the stitched
# video's last frame leads into its first instead of repeating it.
# - svi-pro: the final latent holds the anchor (the photo encoded on its own) and the mask marks all its 4
#   frames known, so its 4 frames all show the photo.
# - last-frame: only the last frame is the photo, as in diffusers' `last_image` (its mask marks 1 of 4).
LOOP_TAIL_FRAMES = {"svi-pro": 4, "last-frame": 1}
MAX_FRAMES = {
    # SVI's pinned issue #51 (vita-epfl/Stable-Video-Infinity): "use 81-frame per-clip ... 121 frames ... will
    # lead to color degradation"; 81 is also the default of inference_svi_2.0_pro.py.
    "svi-pro": 81,
    "last-frame": 161,  # plain Wan 2.2: two of its 81-frame windows; longer leaves what the model was trained on
}
MAX_SIDE = 1280  # Wan 2.2 A14B tops out at 720p
MAX_STRENGTH = 4.0  # LoRA strengths above this only burn the picture


@dataclass(frozen=True)
class Recipe:
    """A whole sampling recipe: steps, guidance per expert, expert switch, shift and adapter strengths.

    A job names one (its `quality`); every value of the recipe is applied to that job, including the
    adapter strengths, so a `quality` job runs without LightX2V and the next `fast` job with it.
    """

    name: str
    num_inference_steps: int
    guidance_high: float  # classifier-free guidance on the high-noise expert; 1 skips its negative pass
    guidance_low: float
    boundary_ratio: float
    shift: float
    svi_high: float
    svi_low: float
    lightx2v_high: float
    lightx2v_low: float

    def values(self) -> dict:
        """The recipe as GenerationSettings fields."""
        return {k: getattr(self, k) for k in RECIPE_KEYS}

    def with_overrides(self, changes: dict) -> "Recipe":
        """A copy with some values replaced (operator overrides); bad keys or values raise `BadSetting`."""
        unknown = sorted(set(changes) - set(RECIPE_KEYS))
        if unknown:
            raise BadSetting(f"recipe {self.name!r}: unknown key(s) {unknown}; known keys are {list(RECIPE_KEYS)}")
        values = {**self.values(), **changes}
        # range checks, naming the bad value; the chaining a job picks is checked against it per job
        GenerationSettings(**values, chaining="last-frame")
        return Recipe(name=self.name, **values)


RECIPE_KEYS = ("num_inference_steps", "guidance_high", "guidance_low", "boundary_ratio", "shift",
               "svi_high", "svi_low", "lightx2v_high", "lightx2v_low")
RECIPES = {
    # LightX2V's 4-step distill (ModelTC/LightX2V configs/distill/wan22/wan_moe_i2v_distill_with_lora.json:
    # 4 steps, shift 5, enable_cfg false, 2 high + 2 low). LightX2V at 0.5 on the high-noise expert and 1.0
    # on the low-noise one as SVI's Wan 2.2 workflows and docs/svi/comfyui.md advise (full strength on the
    # high expert slows motion). Boundary 0.875 is SVI 2.0 Pro's switch_DiT_boundary (wan_video_svi_pro.py);
    # on the 4-step grid it splits 2 + 2 like LightX2V's boundary_step_index 2.
    "fast": Recipe(name="fast", num_inference_steps=4, guidance_high=1.0, guidance_low=1.0, boundary_ratio=0.875,
                   shift=5.0, svi_high=1.0, svi_low=1.0, lightx2v_high=0.5, lightx2v_low=1.0),
    # SVI 2.0 Pro's own inference (inference_svi_2.0_pro.py with the pipeline defaults of wan_video_svi_pro.py):
    # 50 steps, cfg 5 on both experts, boundary 0.875, shift 5, the SVI LoRA at 1 on both experts, no LightX2V.
    "quality": Recipe(name="quality", num_inference_steps=50, guidance_high=5.0, guidance_low=5.0,
                      boundary_ratio=0.875, shift=5.0, svi_high=1.0, svi_low=1.0, lightx2v_high=0.0, lightx2v_low=0.0),
}
DEFAULT_RECIPE = "fast"


@dataclass(frozen=True)
class GenerationSettings:
    seed: int = 0
    num_frames: int = 81  # per segment; the VAE packs 4 frames per latent after the first, so 4k+1
    height: int = 480  # landscape size; portrait photos swap height and width
    width: int = 832
    # The sampling recipe; the defaults are the `fast` recipe (see RECIPES).
    num_inference_steps: int = 4
    guidance_high: float = 1.0  # cfg scale while the high-noise expert runs; 1 skips the negative pass
    guidance_low: float = 1.0  # cfg scale while the low-noise expert runs
    boundary_ratio: float = 0.875  # t >= boundary_ratio * 1000 runs on the high-noise expert
    shift: float = 5.0  # flow-matching timestep shift of Wan I2V
    svi_high: float = 1.0  # SVI 2.0 Pro LoRA strength on the high-noise expert
    svi_low: float = 1.0
    lightx2v_high: float = 0.5  # LightX2V 4-step LoRA strength on the high-noise expert
    lightx2v_low: float = 1.0
    fps: int = 16  # Wan's training frame rate: 81 frames ~ 5 s
    chaining: str = "svi-pro"  # or "last-frame": plain Wan 2.2 I2V from the last decoded frame
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    loop: bool = False  # the last segment ends on the story's first frame, so the video plays on repeat
    loop_strength: float = 1.0  # scale of that end latent in the condition; 1 locks the end to the photo
    color_match: str = "off"  # "anchor": later segments take the photo's colour statistics (engine.color)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `BadSetting` naming the first bad value and its limit."""
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63 - 1000:
            raise BadSetting(f"seed must be an integer in [0, 2**63 - 1000) but is {self.seed!r}")
        if self.chaining not in CHAINING_MODES:
            raise BadSetting(f"chaining must be one of {CHAINING_MODES} but is {self.chaining!r}")
        if not isinstance(self.num_frames, int) or self.num_frames < 5 or (self.num_frames - 1) % 4:
            raise BadSetting(f"num_frames must be 4k+1 and at least 5 (e.g. 81) but is {self.num_frames!r}")
        if self.num_frames > MAX_FRAMES[self.chaining]:
            raise BadSetting(f"num_frames is {self.num_frames}; the limit with {self.chaining} chaining is "
                             f"{MAX_FRAMES[self.chaining]}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 16 or v % 16:
                raise BadSetting(f"{name} has to be a positive multiple of 16 but is {v!r}")
            if v > MAX_SIDE:
                raise BadSetting(f"{name} is {v}; the limit is {MAX_SIDE}")
        if not isinstance(self.num_inference_steps, int) or not 1 <= self.num_inference_steps <= 100:
            raise BadSetting(f"num_inference_steps must be in [1, 100] but is {self.num_inference_steps!r}")
        for name in ("guidance_high", "guidance_low"):
            if not 1.0 <= float(getattr(self, name)) <= 20.0:
                raise BadSetting(f"{name} must be in [1, 20] but is {getattr(self, name)!r}")
        if not 0.0 <= float(self.boundary_ratio) <= 1.0:
            raise BadSetting(f"boundary_ratio must be in [0, 1] but is {self.boundary_ratio!r}")
        if not 0.0 < float(self.shift) <= 20.0:
            raise BadSetting(f"shift must be in (0, 20] but is {self.shift!r}")
        for name in ("svi_high", "svi_low", "lightx2v_high", "lightx2v_low"):
            if not 0.0 <= float(getattr(self, name)) <= MAX_STRENGTH:
                raise BadSetting(f"{name} must be in [0, {MAX_STRENGTH:g}] but is {getattr(self, name)!r}")
        if self.chaining == "svi-pro" and self.svi_high == 0 and self.svi_low == 0:
            raise BadSetting("svi-pro chaining needs the SVI LoRA, but svi_high and svi_low are both 0; "
                             "use chaining last-frame for plain Wan 2.2")
        if not isinstance(self.fps, int) or not 1 <= self.fps <= 60:
            raise BadSetting(f"fps must be an integer in [1, 60] but is {self.fps!r}")
        if not isinstance(self.negative_prompt, str):
            raise BadSetting(f"negative_prompt must be text but is {self.negative_prompt!r}")
        if not isinstance(self.loop, bool):
            raise BadSetting(f"loop must be true or false but is {self.loop!r}")
        check_loop_strength(self.loop_strength)
        if self.color_match not in COLOR_MATCH_MODES:
            raise BadSetting(f"color_match must be one of {COLOR_MATCH_MODES} but is {self.color_match!r}")

    @property
    def num_latent_frames(self) -> int:
        return (self.num_frames - 1) // 4 + 1

    @property
    def seam_frames(self) -> int:
        """Frames dropped at the start of every segment after the first (see SEAM_FRAMES)."""
        return SEAM_FRAMES[self.chaining]

    @property
    def loop_tail_frames(self) -> int:
        """Frames dropped at the end of the last segment: those of a loop that repeat the first frame."""
        return LOOP_TAIL_FRAMES[self.chaining] if self.loop else 0

    def story_frames(self, num_segments: int) -> int:
        """Frames of a stitched story of `num_segments` segments (README, "Loops")."""
        return (self.num_frames + (num_segments - 1) * (self.num_frames - self.seam_frames)
                - self.loop_tail_frames)

    @property
    def uses_guidance(self) -> bool:
        return max(float(self.guidance_high), float(self.guidance_low)) > 1.0

    @property
    def lora_strengths(self) -> "LoraStrengths":
        """The adapter weights this job runs with. `last-frame` is plain Wan 2.2 I2V conditioning, which the
        SVI 2.0 Pro LoRA was not trained on (docs/svi/svi_2.0_pro.md), so SVI is off there."""
        svi = self.chaining == "svi-pro"
        return LoraStrengths(svi_high=self.svi_high if svi else 0.0, svi_low=self.svi_low if svi else 0.0,
                             lightx2v_high=self.lightx2v_high, lightx2v_low=self.lightx2v_low)

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationSettings":
        """Build from a stored dict; unknown keys and wrong types raise `BadSetting`."""
        d = dict(d)
        if "guidance_scale" in d:  # jobs queued before guidance was set per expert
            scale = d.pop("guidance_scale")
            d = {"guidance_high": scale, "guidance_low": scale, **d}
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

    def with_recipe(self, recipe: Recipe) -> "GenerationSettings":
        """Return a copy that samples with every value of `recipe`."""
        return GenerationSettings(**{**self.to_dict(), **recipe.values()})

    def oriented(self, portrait: bool) -> "GenerationSettings":
        """Return a copy whose (height, width) match the photo: landscape keeps width >= height."""
        long, short = max(self.height, self.width), min(self.height, self.width)
        h, w = (long, short) if portrait else (short, long)
        return GenerationSettings(**{**self.to_dict(), "height": h, "width": w})


@dataclass(frozen=True)
class LoraStrengths:
    """Per-expert adapter weights; the defaults are the `fast` recipe's."""

    svi_high: float = 1.0
    svi_low: float = 1.0
    lightx2v_high: float = 0.5
    lightx2v_low: float = 1.0
