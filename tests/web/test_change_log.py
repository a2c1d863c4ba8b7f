"""The SQLite change log behind the live updates: trimmed by count and age, and a cursor older
than what it keeps asks for a reset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import uuid_utils

from conveyor.brokers import Message, Outcome
from conveyor.brokers import sqlite as sqlite_module
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.testing import FakeClock


def message() -> Message:
    return Message(id=str(uuid_utils.uuid7()), task="t", queue="q", payload=b'{"args":[],"kwargs":{}}')


def rows(broker: SQLiteBroker) -> int:
    with broker._read() as conn:
        return int(conn.execute("SELECT count(*) FROM conveyor_changes").fetchone()[0])


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[SQLiteBroker]:
    made = SQLiteBroker(f"sqlite:///{tmp_path}/log.db", clock=FakeClock(1_700_000_000.0))
    made.open()
    yield made
    made.close()


def drain(broker: SQLiteBroker, n: int) -> None:
    broker.enqueue([message() for _ in range(n)])
    leases = broker.fetch(["q"], n, 30.0, "c")
    broker.ack([Outcome(lease.job_id, lease.token, "succeeded") for lease in leases])


def test_the_log_keeps_a_bounded_number_of_events(broker: SQLiteBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    _, old_cursor = broker.changes(None)
    drain(broker, 10)  # two logged changes each: running, succeeded
    assert rows(broker) == 20
    monkeypatch.setattr(sqlite_module, "EVENT_KEEP", 5)
    broker.recover()
    assert rows(broker) == 5
    events, _ = broker.changes(old_cursor)
    assert [e.kind for e in events] == ["reset"]


def test_the_log_forgets_events_older_than_ten_minutes(broker: SQLiteBroker) -> None:
    drain(broker, 3)
    _, cursor = broker.changes(None)
    clock = broker.clock
    assert isinstance(clock, FakeClock)
    clock.advance(sqlite_module.EVENT_AGE + 1)
    drain(broker, 1)
    broker.prune(7 * 86400)
    assert rows(broker) == 2  # the young ones
    events, _ = broker.changes("0-0")
    assert [e.kind for e in events] == ["reset"]
    assert [e.data["state"] for e in broker.changes(cursor)[0]][-2:] == ["running", "succeeded"]


def test_the_log_keeps_its_newest_event_so_cursors_never_restart(broker: SQLiteBroker) -> None:
    drain(broker, 2)
    clock = broker.clock
    assert isinstance(clock, FakeClock)
    clock.advance(sqlite_module.EVENT_AGE * 2)
    broker.recover()
    assert rows(broker) == 1
    _, cursor = broker.changes(None)
    assert cursor.startswith("4-")


EARLY_LOG = """
CREATE TABLE conveyor_jobs (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, task TEXT NOT NULL, queue TEXT NOT NULL,
    state TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0, payload BLOB NOT NULL, key TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL DEFAULT 1, timeout REAL,
    created_at REAL NOT NULL, run_at REAL, started_at REAL, finished_at REAL, updated_at REAL, lease_until REAL,
    token INTEGER NOT NULL DEFAULT 0, consumer TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0, progress REAL,
    progress_message TEXT, result BLOB, error TEXT, history TEXT);
CREATE TABLE conveyor_events (id INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL, ref TEXT NOT NULL,
    state TEXT, task TEXT, queue TEXT, progress REAL, message TEXT, attempts INTEGER);
CREATE TRIGGER conveyor_jobs_inserted AFTER INSERT ON conveyor_jobs BEGIN
    INSERT INTO conveyor_events (at, kind, ref, state) VALUES (NEW.created_at, 'job', NEW.id, NEW.state);
END;
CREATE TRIGGER conveyor_jobs_changed AFTER UPDATE OF state ON conveyor_jobs BEGIN
    INSERT INTO conveyor_events (at, kind, ref, state) VALUES (NEW.updated_at, 'job', NEW.id, NEW.state);
END;
"""


def test_a_database_with_the_early_change_log_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "early.db"
    conn = sqlite3.connect(path)
    conn.executescript(EARLY_LOG)
    conn.close()
    broker = SQLiteBroker(f"sqlite:///{path}", clock=FakeClock(1_700_000_000.0))
    try:
        drain(broker, 2)
        assert rows(broker) == 4
        with broker._read() as c:
            names = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE name LIKE 'conveyor_%'")}
        assert "conveyor_events" not in names and "conveyor_jobs_inserted" not in names
    finally:
        broker.close()
