"""The fault tests' verdict on a run, from the ledger their task keeps outside the store (one line
per run's start and end: ``kind job_id attempt pid at``), and the end of their worker processes.
Shared by the Redis, AMQP/STOMP, PostgreSQL and ZeroMQ fault tests (``tests/`` is on ``sys.path``:
pytest puts the top conftest's folder there)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any


def read_ledger(folder: Path) -> list[list[str]]:
    """The rows of ``folder/ledger.log`` (``kind job_id attempt pid at``); none before a run wrote one."""
    path = folder / "ledger.log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def kill_workers(workers: Iterable[Any], output: Callable[[Any], str], what: str = "log") -> None:
    """SIGKILL each worker's process group and print the tail of its ``output`` (pytest shows it
    when the test failed)."""
    for worker in workers:
        worker.kill_group()
        tail = output(worker)[-3000:]
        if tail:
            print(f"--- {what} of worker {worker.pid} (exit {worker.proc.returncode}) ---\n{tail}")


def ledger_report(rows: Iterable[Sequence[str]], job_ids: list[str]) -> dict[str, list[str]]:
    """Lost (no finished run), duplicated (more than one finished run) and overlapping (two runs of
    one job at the same time) jobs among ``job_ids``."""
    starts: dict[tuple[str, str, str], float] = {}
    runs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for kind, job_id, attempt, pid, at in rows:
        if kind == "start":
            starts[(job_id, attempt, pid)] = float(at)
        else:
            runs[job_id].append((starts[(job_id, attempt, pid)], float(at)))
    overlapping = [job_id for job_id, spans in runs.items()
                   if any(later[0] < earlier[1] for earlier, later in pairwise(sorted(spans)))]
    return {"lost": [j for j in job_ids if not runs.get(j)],
            "duplicated": [j for j in job_ids if len(runs.get(j, [])) > 1],
            "overlapping": overlapping}
