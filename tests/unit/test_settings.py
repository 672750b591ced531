from pathlib import Path

import pytest

from corral.settings import Settings, SettingsError, load_settings


def test_defaults() -> None:
    settings, sources = load_settings(environ={})
    assert settings.port == 11435 and settings.host == "127.0.0.1"
    assert settings.threads >= 1
    assert set(sources.values()) == {"default"}


def test_env_then_flag_precedence_and_sources() -> None:
    settings, sources = load_settings(
        flags={"slots": 3, "port": None}, environ={"CORRAL_SLOTS": "9", "CORRAL_PORT": "1234"}
    )
    assert settings.slots == 3 and sources["slots"] == "flag"
    assert settings.port == 1234 and sources["port"] == "env"


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="CORRAL_SLOTS"):
        load_settings(environ={"CORRAL_SLOTS": "many"})


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(SettingsError, match="--context-length"):
        load_settings(flags={"context_length": -5}, environ={})


def test_every_setting_is_documented() -> None:
    assert all(f.description for f in Settings.model_fields.values())


def test_paths_hang_off_home(tmp_path: Path) -> None:
    settings, _ = load_settings(environ={"CORRAL_HOME": str(tmp_path)})
    assert settings.models_dir == tmp_path / "models"
