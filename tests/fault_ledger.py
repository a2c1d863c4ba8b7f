"""The fault tests' verdict on a run, from the ledger their task keeps outside the store (one line
per run's start and end: ``kind job_id attempt pid at``). Shared by the Redis, AMQP/STOMP and
ZeroMQ fault tests (``tests/`` is on ``sys.path``: pytest puts the top conftest's folder there)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from itertools import pairwise


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
