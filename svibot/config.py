"""The one loader of settings: flags and environment variables become frozen, typed configs.

The CLI, the worker and both bots get their settings from `build_config`, so one environment gives
the same limits everywhere. Bot tokens are held as `Secret`s, which never print their value.
Importing this module does not import torch (`svibot --help` stays fast).
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot.moderation import BlockedWords
from bot.config import CLOUD_API_BASE_URL, CLOUD_UPLOAD_LIMIT_MB, SELF_HOSTED_UPLOAD_LIMIT_MB, BotConfig, \
    DiscordConfig, TelegramConfig

from storage import DataDir, Limits, QueueConfig
from storage.dburl import parse_database_url
from storage.errors import BadSetting

from engine.config import RECIPE_KEYS, RECIPES, Recipe
from engine.models.config import EngineConfig
from engine.models.presets import get_preset

if TYPE_CHECKING:
    from engine.worker import WorkerConfig

MAX_SEGMENTS_CEILING = 100  # a story of 100 segments already holds a free T4 for most of a day
RECIPE_ALIASES = {"steps": ("num_inference_steps",), "guidance": ("guidance_high", "guidance_low")}


class Secret:
    """A token from the environment. `repr` and `str` never show it; `reveal()` is the only way out.

    A plain class, not a dataclass, so `dataclasses.asdict` of a config keeps it wrapped.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret(<set>)" if self._value else "Secret(<unset>)"

    __str__ = __repr__


@dataclass(frozen=True)
class TelegramSettings:
    token: Secret
    api_base_url: str = CLOUD_API_BASE_URL
    upload_limit_mb: int = CLOUD_UPLOAD_LIMIT_MB


@dataclass(frozen=True)
class DiscordSettings:
    token: Secret
    guild_id: int | None = None
    spoiler: str = "auto"


@dataclass(frozen=True)
class AppConfig:
    data_dir: DataDir
    queue: QueueConfig
    limits: Limits  # the same object as bot.limits: the CLI and the bots check input alike
    engine: EngineConfig
    worker: WorkerConfig
    bot: BotConfig
    telegram_settings: TelegramSettings
    discord_settings: DiscordSettings

    def telegram(self) -> TelegramConfig:
        """The Telegram bot's config; a missing token or a bad setting raises `BadSetting` naming it."""
        s = self.telegram_settings
        try:
            return TelegramConfig(token=s.token.reveal(), api_base_url=s.api_base_url, upload_limit_mb=s.upload_limit_mb)
        except ValueError as err:
            raise BadSetting(str(err)) from None

    def discord(self) -> DiscordConfig:
        s = self.discord_settings
        try:
            return DiscordConfig(token=s.token.reveal(), guild_id=s.guild_id, spoiler=s.spoiler)
        except ValueError as err:
            raise BadSetting(str(err)) from None


def _number(env: Mapping[str, str], name: str, kind: type, default, *, minimum=None, maximum=None):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise BadSetting(f"{name} must be {what} but is {raw!r}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise BadSetting(f"{name} is {value}; it must be {bounds}")
    return value


def _ids(value: str | None) -> frozenset[str]:
    """A comma-separated id list; blanks are ignored, so "" means nobody is listed."""
    return frozenset(part.strip() for part in (value or "").split(",") if part.strip())


def _on_off(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("on", "off"):
        raise BadSetting(f"{name} must be on or off but is {raw!r}")
    return raw == "on"


def _file_overrides(items: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise BadSetting(f"a model file override must look like KEY=VALUE (e.g. high_repo=me/wan) but is {item!r}")
        out.append((key.strip(), value.strip()))
    return tuple(out)


def _recipe_changes(recipe: str, text: str, where: str) -> dict:
    """'steps=6,guidance=1.5' -> {"num_inference_steps": 6, "guidance_high": 1.5, "guidance_low": 1.5}."""
    changes: dict = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        key, sep, raw = (part.strip() for part in item.partition("="))
        keys = RECIPE_ALIASES.get(key, (key,))
        if not sep or any(k not in RECIPE_KEYS for k in keys):
            raise BadSetting(f"{where}: {item!r} must be KEY=VALUE with KEY one of "
                             f"{sorted(RECIPE_ALIASES) + list(RECIPE_KEYS)} (recipe {recipe!r})")
        kind = int if keys == ("num_inference_steps",) else float
        try:
            value = kind(raw)
        except ValueError:
            raise BadSetting(f"{where}: {key} must be {'an integer' if kind is int else 'a number'} "
                             f"but is {raw!r}") from None
        changes.update(dict.fromkeys(keys, value))
    return changes


def build_recipes(flags: list[str], env: Mapping[str, str]) -> dict[str, Recipe]:
    """The recipes with the operator's overrides: SVIBOT_RECIPE_<NAME>, then each --recipe NAME:KEY=VALUE,..."""
    recipes = dict(RECIPES)
    for name, recipe in RECIPES.items():
        var = f"SVIBOT_RECIPE_{name.upper()}"
        if env.get(var, "").strip():
            recipes[name] = recipe.with_overrides(_recipe_changes(name, env[var], var))
    for flag in flags:
        name, sep, text = flag.partition(":")
        if not sep or name.strip() not in recipes:
            raise BadSetting(f"--recipe must look like NAME:KEY=VALUE,... with NAME one of {sorted(recipes)} "
                             f"(e.g. fast:steps=6,guidance=1.5) but is {flag!r}")
        name = name.strip()
        recipes[name] = recipes[name].with_overrides(_recipe_changes(name, text, "--recipe"))
    return recipes


def _presets(raw: str | None) -> tuple[str, ...] | None:
    """`--serve-presets q4_k_m,tiny`: the presets a worker claims jobs for; unset: any."""
    if not raw:
        return None
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    return tuple(get_preset(n).name for n in names)  # an unknown name raises BadSetting naming it


def load_limits(env: Mapping[str, str]) -> Limits:
    return Limits(
        max_segments=_number(env, "SVIBOT_MAX_SEGMENTS", int, Limits.max_segments, minimum=1,
                             maximum=MAX_SEGMENTS_CEILING),
        max_prompt_chars=_number(env, "SVIBOT_MAX_PROMPT_CHARS", int, Limits.max_prompt_chars, minimum=1),
    )


def load_bot(env: Mapping[str, str], limits: Limits) -> BotConfig:
    try:
        blocked = BlockedWords.parse(env.get("SVIBOT_BLOCKED_WORDS"))
    except ValueError as err:  # e.g. a path that is not there
        raise BadSetting(f"SVIBOT_BLOCKED_WORDS: {err}") from None
    return BotConfig(
        allowed_users=_ids(env.get("SVIBOT_ALLOWED_USERS")),
        allowed_chats=_ids(env.get("SVIBOT_ALLOWED_CHATS")),
        admins=_ids(env.get("SVIBOT_ADMINS")),
        max_active_jobs=_number(env, "SVIBOT_MAX_ACTIVE_JOBS", int, BotConfig.max_active_jobs, minimum=1),
        stories_per_day=_number(env, "SVIBOT_STORIES_PER_DAY", int, BotConfig.stories_per_day, minimum=1),
        limits=limits,
        blocked_words=blocked,
    )


def load_telegram(env: Mapping[str, str]) -> TelegramSettings:
    base = (env.get("TELEGRAM_API_BASE_URL", "").strip() or CLOUD_API_BASE_URL).rstrip("/")
    ceiling = CLOUD_UPLOAD_LIMIT_MB if base == CLOUD_API_BASE_URL else SELF_HOSTED_UPLOAD_LIMIT_MB
    return TelegramSettings(
        token=Secret(env.get("TELEGRAM_BOT_TOKEN", "").strip()),
        api_base_url=base,
        upload_limit_mb=_number(env, "SVIBOT_TELEGRAM_UPLOAD_LIMIT_MB", int, CLOUD_UPLOAD_LIMIT_MB,
                                minimum=1, maximum=ceiling))


def load_discord(env: Mapping[str, str]) -> DiscordSettings:
    raw_guild = env.get("DISCORD_GUILD_ID", "").strip()
    if raw_guild and not raw_guild.isdigit():
        raise BadSetting(f"DISCORD_GUILD_ID must be a numeric id, not {raw_guild!r}")
    return DiscordSettings(
        token=Secret(env.get("DISCORD_BOT_TOKEN", "").strip()),
        guild_id=int(raw_guild) if raw_guild else None,
        spoiler=env.get("SVIBOT_DISCORD_SPOILER", "").strip().lower() or "auto")


def build_config(args: argparse.Namespace, env: Mapping[str, str]) -> AppConfig:
    """Flags win over environment variables, which win over defaults."""
    from engine.models.config import default_preset  # asks torch about CUDA; only when a preset is unset
    from engine.worker import WorkerConfig  # imports torch, so not at module level

    data_dir = DataDir(Path(getattr(args, "data_dir", None) or env.get("SVIBOT_DATA_DIR") or "svibot-data"))
    database_url = getattr(args, "database_url", None) or env.get("SVIBOT_DATABASE_URL") or None
    if database_url:
        parse_database_url(database_url)  # a malformed URL stops here, named without its password
    queue = QueueConfig(
        db_path=data_dir.db_path,
        database_url=database_url,
        lease_seconds=_number(env, "SVIBOT_LEASE_SECONDS", float, QueueConfig.lease_seconds, minimum=1),
        max_attempts=_number(env, "SVIBOT_MAX_ATTEMPTS", int, QueueConfig.max_attempts, minimum=1),
    )
    limits = load_limits(env)
    files = [s for s in env.get("SVIBOT_MODEL_FILES", "").split(",") if s.strip()]
    files += getattr(args, "model_file", None) or []
    vram = getattr(args, "vram_budget", None)
    ram = getattr(args, "ram_budget", None)
    vram = vram if vram is not None else _number(env, "SVIBOT_VRAM_BUDGET", float, None)
    ram = ram if ram is not None else _number(env, "SVIBOT_RAM_BUDGET", float, None)
    engine = EngineConfig(
        # the default is the largest preset up to q4_k_m that fits these budgets (LoRAs counted)
        preset=getattr(args, "preset", None) or env.get("SVIBOT_PRESET") or default_preset(vram, ram),
        models_dir=data_dir.models,
        cache_dir=data_dir.cache,
        device=env.get("SVIBOT_DEVICE") or None,
        dtype=env.get("SVIBOT_DTYPE") or None,
        file_overrides=_file_overrides(files),
        vram_budget_gib=vram,
        ram_budget_gib=ram,
        attention=env.get("SVIBOT_ATTENTION") or "auto",
        compile=env.get("SVIBOT_COMPILE") or "auto",
        weights=env.get("SVIBOT_WEIGHTS") or "auto",
    )
    worker = WorkerConfig(
        data_dir=data_dir,
        engine=engine,
        progress_interval_s=_number(env, "SVIBOT_PROGRESS_INTERVAL", float, WorkerConfig.progress_interval_s,
                                    minimum=0),
        heartbeat_s=max(1.0, queue.lease_seconds / 4),
        recipes=build_recipes(getattr(args, "recipe", None) or [], env),
        presets=_presets(getattr(args, "serve_presets", None) or env.get("SVIBOT_SERVE_PRESETS")),
        previews=_on_off(env, "SVIBOT_PREVIEW", False),
        retention_days=_number(env, "SVIBOT_RETENTION_DAYS", float, WorkerConfig.retention_days),
    )
    return AppConfig(data_dir=data_dir, queue=queue, limits=limits, engine=engine, worker=worker,
                     bot=load_bot(env, limits), telegram_settings=load_telegram(env),
                     discord_settings=load_discord(env))
