"""SQLite's own failures reach callers as BrokerError (which the worker logs and retries), never as a
bare sqlite3 exception that would end a consumer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conveyor.brokers import Message
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.errors import BrokerError


def test_a_database_locked_past_busy_timeout_is_a_broker_error(tmp_path: Path) -> None:
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/locked.db?busy_timeout=0.05")
    broker.open()
    (job_id,) = broker.enqueue([Message(id="j1", task="t", queue="default", payload=b"{}")])
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(BrokerError, match="locked"):
            broker.fetch(["default"], 10, 30.0, "c1")
        with pytest.raises(BrokerError, match="locked"):
            broker.enqueue([Message(id="j2", task="t", queue="default", payload=b"{}")])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # Nothing half-done: the broker works again and the first job is intact.
    (lease,) = broker.fetch(["default"], 10, 30.0, "c1")
    assert lease.job_id == job_id
    assert broker.get("j2") is None
    broker.close()
