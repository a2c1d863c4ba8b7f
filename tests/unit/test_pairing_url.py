"""Choosing a store and a transport by URL: from_url(url, store=), Conveyor(url, store=), app.store."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.brokers import from_url, registry
from conveyor.brokers.memory import MemoryBroker
from conveyor.brokers.memory_transport import MemoryTransport
from conveyor.brokers.paired import PairedBroker
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.errors import BrokerError, ConfigError


@pytest.fixture
def transport_only(monkeypatch: pytest.MonkeyPatch) -> str:
    """A scheme that names only a transport (the memory one), as amqp:// will."""
    monkeypatch.setitem(registry._TRANSPORTS, "carrier", "conveyor.brokers.memory_transport:MemoryTransport")
    return "carrier://guest:secret@127.0.0.1:5672/"


def test_a_transport_without_a_store_says_how_to_name_one(transport_only: str) -> None:
    with pytest.raises(ConfigError, match=r"carrier:// is a transport: .* keeps no job history") as info:
        from_url(transport_only)
    assert "store=" in str(info.value) and "CONVEYOR_STORE" in str(info.value)
    assert "secret" not in str(info.value)


def test_a_transport_with_a_store_is_paired(transport_only: str, tmp_path: Path) -> None:
    broker = from_url(transport_only, store=f"sqlite:///{tmp_path}/jobs.db")
    assert isinstance(broker, PairedBroker)
    assert isinstance(broker.transport, MemoryTransport)
    assert isinstance(broker.store, SQLiteBroker)
    assert not (tmp_path / "jobs.db").exists()  # nothing connects until first use


def test_memory_with_a_store_is_the_memory_transport(tmp_path: Path) -> None:
    broker = from_url("memory://", store=f"sqlite:///{tmp_path}/jobs.db")
    assert isinstance(broker, PairedBroker) and isinstance(broker.store, SQLiteBroker)
    assert broker.shared_between_processes is False  # the memory transport lives in one process


def test_memory_with_a_redis_store_is_the_memory_transport() -> None:
    from conveyor.brokers.redis import RedisBroker

    broker = from_url("memory://", store="redis://127.0.0.1:6379/15?prefix=never-opened")
    assert isinstance(broker, PairedBroker) and isinstance(broker.store, RedisBroker)
    assert isinstance(broker.transport, MemoryTransport)  # nothing connects until first use


def test_memory_alone_or_with_itself_is_the_memory_store() -> None:
    assert isinstance(from_url("memory://"), MemoryBroker)
    assert isinstance(from_url("memory://", store="memory://"), MemoryBroker)


def test_a_second_store_next_to_one_that_keeps_its_own_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sqlite:// keeps its own jobs.*redis://:\*\*\*@h:6379/0"):
        from_url(f"sqlite:///{tmp_path}/jobs.db", store="redis://:hunter2@h:6379/0")


def test_the_same_store_url_is_accepted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    assert isinstance(from_url(url, store=url), SQLiteBroker)


def test_conveyor_store_argument(tmp_path: Path) -> None:
    app = Conveyor("memory://", store=f"sqlite:///{tmp_path}/jobs.db")
    assert isinstance(app.broker, PairedBroker)
    assert app.store is app.broker.store
    assert isinstance(app.store, SQLiteBroker)


def test_conveyor_store_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONVEYOR_STORE", f"sqlite:///{tmp_path}/jobs.db")
    assert isinstance(Conveyor("memory://").store, SQLiteBroker)
    with pytest.raises(ConfigError, match="keeps its own jobs"):
        Conveyor(f"sqlite:///{tmp_path}/other.db").broker  # noqa: B018 - created on first use


def test_a_native_store_is_its_own_store() -> None:
    app = Conveyor("memory://")
    assert app.store is app.broker


def test_a_store_that_cannot_be_paired_is_refused(transport_only: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MemoryBroker, "supports_pairing", False)
    with pytest.raises(ConfigError, match=r"memory:// store cannot be paired"):
        from_url(transport_only, store="memory://")


def test_third_party_stores_and_transports_come_from_entry_points(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    import importlib.metadata as metadata

    registered = [
        metadata.EntryPoint("wire", "conveyor.brokers.memory_transport:MemoryTransport", "conveyor.transports"),
        metadata.EntryPoint("jobdb", "conveyor.brokers.memory_transport:MemoryTransport", "conveyor.stores"),
        metadata.EntryPoint("olddb", "conveyor.brokers.memory:MemoryBroker", "conveyor.brokers"),
        metadata.EntryPoint("sqlite", "conveyor.brokers.memory:MemoryBroker", "conveyor.stores"),  # never used
    ]
    monkeypatch.setattr(metadata, "entry_points", lambda group: [ep for ep in registered if ep.group == group])
    assert isinstance(from_url("olddb://"), MemoryBroker)  # the group of before the split still works
    assert isinstance(from_url(f"sqlite:///{tmp_path}/a.db"), SQLiteBroker)  # a built-in is never shadowed
    paired = from_url("wire://", store=f"sqlite:///{tmp_path}/b.db")
    assert isinstance(paired, PairedBroker) and isinstance(paired.transport, MemoryTransport)
    with pytest.raises(ConfigError, match="wire:// is a transport"):
        from_url("wire://")
    with pytest.raises(BrokerError, match="is not a conveyor Broker"):
        from_url("jobdb://")
