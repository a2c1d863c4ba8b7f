"""A database written by an earlier Conveyor opens and reads as before."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import orjson

from conveyor.brokers.sqlite import SQLiteBroker


def test_a_heartbeat_written_before_workers_carried_task_names_reads_with_none(tmp_path: Path) -> None:
    """Worker heartbeats are one JSON document per row: a new field needs no column, and a row
    without it reads with the default."""
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/c.db")
    broker.open()
    now = time.time()
    old = {"id": "w-old", "hostname": "h", "pid": 1, "queues": ["default"], "started_at": now, "last_seen": now,
           "supervisor": None, "pool": "process", "current": [], "rss": 0, "processed": 0, "failed": 0}
    with sqlite3.connect(tmp_path / "c.db") as conn:
        conn.execute("INSERT INTO conveyor_workers (id, last_seen, info) VALUES (?, ?, ?)",
                     ("w-old", now, orjson.dumps(old).decode()))
    (worker,) = broker.workers()
    assert (worker.id, worker.tasks) == ("w-old", [])
    broker.close()
