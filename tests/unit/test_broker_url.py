"""Choosing a broker by URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.brokers import broker_class, from_url
from conveyor.brokers.memory import MemoryBroker
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.errors import BrokerError


def test_memory() -> None:
    broker = from_url("memory://")
    assert isinstance(broker, MemoryBroker)
    assert broker.fork() is broker


def test_sqlite_is_not_opened_until_used(tmp_path: Path) -> None:
    broker = from_url(f"sqlite:///{tmp_path}/jobs.db?synchronous=normal&busy_timeout=2")
    assert isinstance(broker, SQLiteBroker)
    assert not (tmp_path / "jobs.db").exists()


def test_scheme_is_case_insensitive() -> None:
    assert broker_class("MEMORY://") is MemoryBroker


def test_unknown_scheme_lists_known_schemes() -> None:
    with pytest.raises(BrokerError, match=r"no broker for scheme 'kafka'.*known: .*memory.*sqlite"):
        from_url("kafka://localhost:9092")


def test_url_without_scheme() -> None:
    with pytest.raises(BrokerError, match="has no scheme"):
        from_url("conveyor.db")


@pytest.mark.parametrize("url", ["sqlite://relative", "sqlite://", "sqlite:///"])
def test_sqlite_without_a_path(url: str) -> None:
    with pytest.raises(BrokerError, match="needs a path"):
        from_url(url)


def test_sqlite_unknown_option() -> None:
    with pytest.raises(BrokerError, match=r"unknown SQLite URL option\(s\) \['colour'\]"):
        from_url("sqlite:///jobs.db?colour=blue")


@pytest.mark.parametrize(
    ("url", "words"),
    [("sqlite:///jobs.db?synchronous=sometimes", "synchronous"), ("sqlite:///jobs.db?busy_timeout=soon", "bad number")],
)
def test_sqlite_bad_option_values(url: str, words: str) -> None:
    with pytest.raises(BrokerError, match=words):
        from_url(url)


def test_sentinel_schemes_are_the_redis_broker() -> None:
    from conveyor.brokers.redis import RedisBroker

    assert broker_class("redis+sentinel://127.0.0.1:26379/main/0") is RedisBroker
    assert broker_class("rediss+sentinel://127.0.0.1:26379/main/0") is RedisBroker


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://app:hunter2@h1:26379,h2/main/0?sentinel_password=hunter2&prefix=x",
     "redis://app:***@h1:26379,h2/main/0?sentinel_password=***&prefix=x"),
    ("sqlite:///jobs.db?token=hunter2&busy_timeout=2", "sqlite:///jobs.db?token=***&busy_timeout=2"),
    ("sqlite:///jobs.db", "sqlite:///jobs.db"),
    ("memory://", "memory://"),
    ("redis://:hunter2@[::1/0", "redis://:***@[::1/0"),  # unparseable, still hidden
    ("redis://:ab/cd==@h:6379/0", "redis://:***@h:6379/0"),  # an unencoded / in the password
    ("redis://h:6379/0?client_name=a@b", "redis://h:6379/0?client_name=a@b"),  # no password: unchanged
])
def test_redact_url_hides_passwords_and_secret_options(url: str, shown: str) -> None:
    from conveyor.config import redact_url

    assert redact_url(url) == shown


def test_sentinel_addresses_may_be_ipv6_and_default_to_port_26379() -> None:
    from conveyor.brokers.redis.link import _sentinel_parts

    assert _sentinel_parts("redis+sentinel://:pw@[::1]:26380,h2,10.0.0.1:7/main/2") == (
        [("::1", 26380), ("h2", 26379), ("10.0.0.1", 7)], "main", 2, ":pw@")
