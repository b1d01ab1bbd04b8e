"""Configuration: defaults, lookup order, and errors that name file, key and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from maild.config import load_settings
from maild.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


def test_defaults_without_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.database.url == "sqlite:///maild.db"
    assert settings.tickets.tag_format == "[#{number}]"
    assert settings.source == "<defaults>"


def test_example_config_is_valid() -> None:
    settings = load_settings(EXAMPLE, env={})
    assert settings.source == str(EXAMPLE)


def test_lookup_order_env_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text('[database]\nurl = "sqlite:///cwd.db"\n')
    other = tmp_path / "other.toml"
    other.write_text('[database]\nurl = "sqlite:///env.db"\n')
    assert load_settings(env={}).database.url == "sqlite:///cwd.db"
    assert load_settings(env={"MAILD_CONFIG": str(other)}).database.url == "sqlite:///env.db"


def test_database_url_from_environment_wins(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[database]\nurl = "sqlite:///file.db"\n')
    settings = load_settings(path, env={"MAILD_DATABASE_URL": "postgresql+psycopg://h/db"})
    assert settings.database.url == "postgresql+psycopg://h/db"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[database]\nurll = 'x'\n", "unknown key 'database.urll'"),
        ("[mail]\nmax_message_size = 'big'\n", "key 'mail.max_message_size'"),
        ("[tickets]\ntag_format = '[#]'\n", "key 'tickets.tag_format'"),
        ("[tickets]\nnumber_format = '{nope}'\n", "key 'tickets.number_format'"),
        ("[logging]\nformat = 'xml'\n", "key 'logging.format'"),
        ("[nosuchsection]\n", "unknown key 'nosuchsection'"),
        ("[database\n", "not valid TOML"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.toml", env={})
