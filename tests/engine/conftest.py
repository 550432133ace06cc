"""Shared fixtures for the engine tests: the tiny models, a test photo and one recorded story."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from engine.config import GenerationSettings
from engine.models.config import EngineConfig
from engine.models.loading import load_models
from engine.models.presets import PRESETS
from tests.support.engine_helpers import PROMPTS, Recording, make_photo, record_story


@pytest.fixture(scope="session")
def tiny_models():
    return load_models(EngineConfig(preset="tiny", models_dir=Path("unused-for-tiny")))


@pytest.fixture(scope="session")
def tiny_settings() -> GenerationSettings:
    return PRESETS["tiny"].settings


@pytest.fixture(scope="session")
def photo() -> bytes:
    return make_photo()


@pytest.fixture(scope="session")
def story(tiny_models, photo, tiny_settings) -> Recording:
    return record_story(tiny_models, photo, PROMPTS, tiny_settings)


@pytest.fixture
def settings_with():
    def build(base: GenerationSettings, **changes) -> GenerationSettings:
        return replace(base, **changes)
    return build
