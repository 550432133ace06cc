"""The one place where flags and environment variables become frozen configs."""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from storage import DataDir, Limits, QueueConfig
from storage.dburl import parse_database_url
from storage.errors import BadSetting

from engine.config import RECIPE_KEYS, RECIPES, Recipe
from engine.models.config import EngineConfig, default_preset
from engine.models.presets import get_preset
from engine.worker import WorkerConfig

RECIPE_ALIASES = {"steps": ("num_inference_steps",), "guidance": ("guidance_high", "guidance_low")}


@dataclass(frozen=True)
class AppConfig:
    data_dir: DataDir
    queue: QueueConfig
    limits: Limits
    engine: EngineConfig
    worker: WorkerConfig


def _number(env: Mapping[str, str], name: str, kind: type, default):
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise BadSetting(f"{name} must be {what} but is {raw!r}") from None


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


def build_config(args: argparse.Namespace, env: Mapping[str, str]) -> AppConfig:
    """Flags win over environment variables, which win over defaults."""
    data_dir = DataDir(Path(getattr(args, "data_dir", None) or env.get("SVIBOT_DATA_DIR") or "svibot-data"))
    database_url = getattr(args, "database_url", None) or env.get("SVIBOT_DATABASE_URL") or None
    if database_url:
        parse_database_url(database_url)  # a malformed URL stops here, named without its password
    queue = QueueConfig(
        db_path=data_dir.db_path,
        database_url=database_url,
        lease_seconds=_number(env, "SVIBOT_LEASE_SECONDS", float, QueueConfig.lease_seconds),
        max_attempts=_number(env, "SVIBOT_MAX_ATTEMPTS", int, QueueConfig.max_attempts),
    )
    limits = Limits(
        max_segments=_number(env, "SVIBOT_MAX_SEGMENTS", int, Limits.max_segments),
        max_prompt_chars=_number(env, "SVIBOT_MAX_PROMPT_CHARS", int, Limits.max_prompt_chars),
    )
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
        progress_interval_s=_number(env, "SVIBOT_PROGRESS_INTERVAL", float, WorkerConfig.progress_interval_s),
        heartbeat_s=max(1.0, queue.lease_seconds / 4),
        recipes=build_recipes(getattr(args, "recipe", None) or [], env),
        presets=_presets(getattr(args, "serve_presets", None) or env.get("SVIBOT_SERVE_PRESETS")),
        previews=_on_off(env, "SVIBOT_PREVIEW", False),
        retention_days=_number(env, "SVIBOT_RETENTION_DAYS", float, WorkerConfig.retention_days),
    )
    return AppConfig(data_dir=data_dir, queue=queue, limits=limits, engine=engine, worker=worker)
