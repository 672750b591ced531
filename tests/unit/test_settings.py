from pathlib import Path

import pytest

from corral.engines.catalog import EngineSettingsError, load_catalog
from corral.settings import Settings, SettingsError, load_settings


def test_defaults() -> None:
    settings, sources = load_settings(environ={})
    assert settings.port == 11435 and settings.host == "127.0.0.1"
    assert set(sources.values()) == {"default"}
    catalog = load_catalog(environ={})
    assert catalog.defaults["llamacpp"].threads >= 1  # type: ignore[attr-defined]
    assert set(catalog.sources.values()) == {"default"}


def test_env_then_flag_precedence_and_sources() -> None:
    settings, sources = load_settings(
        flags={"port": None, "keep_alive": "1m"},
        environ={"CORRAL_KEEP_ALIVE": "9m", "CORRAL_PORT": "1234"},
    )
    assert settings.keep_alive == "1m" and sources["keep_alive"] == "flag"
    assert settings.port == 1234 and sources["port"] == "env"
    catalog = load_catalog(flags={"slots": 3}, environ={"CORRAL_SLOTS": "9", "CORRAL_THREADS": "2"})
    params = catalog.defaults["llamacpp"]
    assert params.slots == 3 and catalog.sources[("llamacpp", "slots")] == "flag"
    assert params.threads == 2 and catalog.sources[("llamacpp", "threads")] == "env"  # type: ignore[attr-defined]


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="CORRAL_PORT"):
        load_settings(environ={"CORRAL_PORT": "many"})
    with pytest.raises(EngineSettingsError, match="CORRAL_SLOTS"):
        load_catalog(environ={"CORRAL_SLOTS": "many"})


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(SettingsError, match="--max-queue"):
        load_settings(flags={"max_queue": -5}, environ={})
    with pytest.raises(EngineSettingsError, match="--context-length"):
        load_catalog(flags={"context_length": -5}, environ={})


def test_every_setting_is_documented() -> None:
    assert all(f.description for f in Settings.model_fields.values())
    for descriptor in load_catalog(environ={}).descriptors:
        assert all(f.description for f in descriptor.params_model.model_fields.values())


def test_paths_hang_off_home(tmp_path: Path) -> None:
    settings, _ = load_settings(environ={"CORRAL_HOME": str(tmp_path)})
    assert settings.models_dir == tmp_path / "models"
