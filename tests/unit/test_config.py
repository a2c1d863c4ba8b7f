"""Settings: defaults < conveyor.toml / [tool.conveyor] < CONVEYOR_* environment < explicit values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.brokers.memory import MemoryBroker
from conveyor.config import Settings, load_settings
from conveyor.errors import ConfigError


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(env={}, folder=tmp_path)
    assert s.url == "sqlite:///conveyor.db"
    assert s.store is None and s.queues is None
    assert s.concurrency == (os.cpu_count() or 2)
    assert (s.pool, s.prefetch, s.retries, s.serializer) == ("process", 128, 3, "json")
    assert (s.lease, s.grace, s.kill_after) == (10.0, 30.0, 5.0)
    assert s.max_payload == 1_048_576
    assert set(s.sources().values()) == {"default"}
    assert set(s.sources()) == set(s.as_dict())
    assert "_sources" not in s.as_dict()


def test_conveyor_toml(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text('url = "memory://"\nconcurrency = 3\nqueues = ["a", "b"]\nmax-payload = 2048\n')
    s = load_settings(env={}, folder=tmp_path)
    assert (s.url, s.concurrency, s.queues, s.max_payload) == ("memory://", 3, ["a", "b"], 2048)
    sources = s.sources()
    assert sources["concurrency"] == sources["max_payload"] == str(path)
    assert sources["retries"] == "default"


def test_pyproject_tool_conveyor(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "x"\n\n[tool.conveyor]\nconcurrency = 5\npool = "thread"\n')
    s = load_settings(env={}, folder=tmp_path)
    assert (s.concurrency, s.pool) == (5, "thread")
    assert s.sources()["pool"] == f"{path} [tool.conveyor]"


def test_pyproject_without_table_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert set(load_settings(env={}, folder=tmp_path).sources().values()) == {"default"}


def test_conveyor_toml_wins_over_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.conveyor]\nconcurrency = 5\n")
    (tmp_path / "conveyor.toml").write_text("concurrency = 6\n")
    assert load_settings(env={}, folder=tmp_path).concurrency == 6


def test_current_folder_is_the_default(tmp_path: Path) -> None:
    (tmp_path / "conveyor.toml").write_text("retries = 9\n")  # tmp_path is the cwd (conftest)
    assert load_settings(env={}).retries == 9


def test_env_overrides_file(tmp_path: Path) -> None:
    (tmp_path / "conveyor.toml").write_text("concurrency = 3\nretries = 1\n")
    s = load_settings(env={"CONVEYOR_CONCURRENCY": "7", "OTHER": "x"}, folder=tmp_path)
    assert (s.concurrency, s.retries) == (7, 1)
    assert s.sources()["concurrency"] == "env CONVEYOR_CONCURRENCY"
    assert s.sources()["retries"] == str(tmp_path / "conveyor.toml")


def test_explicit_overrides_beat_env(tmp_path: Path) -> None:
    (tmp_path / "conveyor.toml").write_text("concurrency = 3\n")
    s = load_settings({"concurrency": 9}, env={"CONVEYOR_CONCURRENCY": "7"}, folder=tmp_path)
    assert s.concurrency == 9
    assert s.sources()["concurrency"] == "argument"


def test_os_environ_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_URL", "memory://")
    monkeypatch.setenv("CONVEYOR_RETRIES", "0")
    app = Conveyor()
    assert isinstance(app.broker, MemoryBroker)
    assert app.settings.retries == 0
    assert app.settings.sources()["url"] == "env CONVEYOR_URL"


def test_app_arguments_are_settings() -> None:
    app = Conveyor("memory://", retries=5, max_payload=10)
    assert (app.settings.url, app.settings.retries, app.settings.max_payload) == ("memory://", 5, 10)
    assert app.settings.sources()["retries"] == "argument"
    with pytest.raises(ConfigError, match="unknown setting 'retrys'"):
        Conveyor("memory://", retrys=5)


def test_app_does_not_connect_at_construction() -> None:
    from conveyor.errors import BrokerError

    app = Conveyor("nosuch://host")
    with pytest.raises(BrokerError):
        app.broker  # noqa: B018


def test_queues_from_env_is_a_list(tmp_path: Path) -> None:
    s = load_settings(env={"CONVEYOR_QUEUES": "a,b"}, folder=tmp_path)
    assert s.queues == ["a", "b"]
    assert load_settings(env={"CONVEYOR_QUEUES": " media , , mail "}, folder=tmp_path).queues == ["media", "mail"]
    assert load_settings(env={"CONVEYOR_QUEUES": ""}, folder=tmp_path).queues is None


def test_none_for_optional_settings(tmp_path: Path) -> None:
    (tmp_path / "conveyor.toml").write_text("max_memory = 512\n")
    s = load_settings(env={"CONVEYOR_MAX_MEMORY": "none", "CONVEYOR_MAX_JOBS_PER_CHILD": "100"}, folder=tmp_path)
    assert (s.max_memory, s.max_jobs_per_child) == (None, 100)


def test_bad_value_in_file_names_setting_and_source(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text('concurrency = "many"\n')
    with pytest.raises(ConfigError, match=rf"'concurrency' \(from {path}\)"):
        load_settings(env={}, folder=tmp_path)


def test_bad_value_in_env_names_setting_and_source(tmp_path: Path) -> None:
    expected = r"bad value 'lots' for setting 'concurrency' \(from env CONVEYOR_CONCURRENCY\)"
    with pytest.raises(ConfigError, match=expected):
        load_settings(env={"CONVEYOR_CONCURRENCY": "lots"}, folder=tmp_path)
    with pytest.raises(ConfigError, match=r"'pool' \(from env CONVEYOR_POOL\)"):
        load_settings(env={"CONVEYOR_POOL": "fork"}, folder=tmp_path)


@pytest.mark.parametrize(
    ("name", "value"),
    [("concurrency", 0), ("prefetch", -1), ("lease", 0), ("retries", -2), ("max_payload", 0), ("grace", -1.0),
     ("max_jobs_per_child", 0)],
)
def test_out_of_range_values(tmp_path: Path, name: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"'{name}' \(from argument\): must be"):
        load_settings({name: value}, env={}, folder=tmp_path)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text("concurency = 4\n")
    with pytest.raises(ConfigError, match=rf"unknown setting 'concurency' \(from {path}\); known: .*concurrency"):
        load_settings(env={}, folder=tmp_path)


def test_malformed_file(tmp_path: Path) -> None:
    (tmp_path / "conveyor.toml").write_text("concurrency = = 4\n")
    with pytest.raises(ConfigError, match="cannot read settings file"):
        load_settings(env={}, folder=tmp_path)


def test_replace_skips_none_and_records_source() -> None:
    base = Settings()
    new = base.replace("flag --concurrency", concurrency="4", url=None)
    assert (new.concurrency, new.url) == (4, base.url)
    assert new.sources()["concurrency"] == "flag --concurrency"
    assert new.sources()["url"] == "default"
    assert base.sources()["concurrency"] == "default"
