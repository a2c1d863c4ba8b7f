"""``conveyor demo``'s parts that need no worker: the live table in a small terminal, and the lock
that keeps a second demo from deleting the first one's database."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from rich.console import Console

from conveyor.brokers import JobRecord
from conveyor.demo import DemoRunning, _only_demo, _table


def _records(n: int) -> list[JobRecord]:
    now = time.time()
    states = ["queued", "running", "succeeded", "scheduled", "failed"]
    return [JobRecord(id=f"{i:08d}", task="conveyor.demo_tasks.transcode", queue="media", state=states[i % 5],
                      payload=b"{}", attempts=1, max_attempts=4, created_at=now - 100 + i,
                      started_at=now - 50 + i if states[i % 5] != "queued" else None,
                      error={"type": "RuntimeError", "message": "region ap-south is unreachable " * 4}
                      if states[i % 5] == "failed" else None)
            for i in range(n)]


def test_the_live_table_fits_an_80_by_24_terminal_with_a_count_of_the_rest() -> None:
    console = Console(width=80, height=24, color_system=None)
    with console.capture() as captured:
        console.print(_table(_records(120), console.width, console.height))
    lines = captured.get().splitlines()
    assert len(lines) <= 24 - 3, "\n".join(lines)  # room left for the lines printed below it
    assert max(len(line) for line in lines) <= 80
    assert any("and 105 more:" in line for line in lines), "\n".join(lines)
    assert sum("transcode" in line for line in lines) == 15
    assert "running" in lines[4]  # the jobs executing now come first


def test_a_small_demo_is_shown_whole() -> None:
    console = Console(width=80, height=24, color_system=None)
    with console.capture() as captured:
        console.print(_table(_records(6), console.width, console.height))
    assert "more" not in captured.get()
    assert captured.get().count("transcode") == 6


def test_a_second_demo_on_the_same_database_is_refused(tmp_path: Path) -> None:
    db = str(tmp_path / "conveyor-demo.db")
    refused = pytest.raises(DemoRunning, match=r"another conveyor demo \(pid \d+\) is running on .*--db")
    with _only_demo(db), refused, _only_demo(db):
        pass
    with _only_demo(db):  # free again once the first has ended
        pass
