"""Concurrent claimers on the PostgreSQL store (issue #12): 8 processes, each with a store of its
own, make 50,000 claims in all on one queue with the SKIP LOCKED batch claim, settling them as
workers do (retries, last-attempt failures, abandoned leases put back by ``recover()``). No job
is ever leased twice at once and no attempt goes above the job's maximum."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import orjson
import pytest
import uuid_utils
from pg_support import Project

from conveyor.brokers import Message

pytestmark = pytest.mark.slow

CLAIMERS = 8
CLAIMS = 50_000
JOBS = 40_000  # about 1.4 claims a job at most (retries): more than enough for 50,000 claims
MAX_ATTEMPTS = 3
CLAIMER = Path(__file__).with_name("pg_claimer.py")


def test_eight_claimers_never_lease_a_job_twice_at_once(project: Project, tmp_path: Path) -> None:
    store = project.app.broker
    now = time.time()
    messages = [Message(id=str(uuid_utils.uuid7()), task="work", queue="default", payload=b'{"args":[0]}',
                        max_attempts=MAX_ATTEMPTS, created_at=now) for _ in range(JOBS)]
    for i in range(0, JOBS, 5000):
        store.enqueue(messages[i:i + 5000])
    started = time.monotonic()
    outs = [tmp_path / f"claims{i}.jsonl" for i in range(CLAIMERS)]
    procs = [subprocess.Popen([sys.executable, str(CLAIMER), project.url, str(CLAIMS // CLAIMERS), str(i), str(out)],
                              stdin=subprocess.DEVNULL) for i, out in enumerate(outs)]
    try:
        codes = [proc.wait(150) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    took = time.monotonic() - started
    assert codes == [0] * CLAIMERS

    claims = [orjson.loads(line) for out in outs for line in out.read_bytes().splitlines()]
    assert len(claims) == CLAIMS
    by_job: dict[str, list[list[object]]] = defaultdict(list)
    for claim in claims:
        by_job[claim[0]].append(claim)
    overlaps, tokens, over_max = [], [], []
    for job_id, runs in by_job.items():
        runs.sort(key=lambda c: c[1])  # by fencing token: the order of the claims
        if [c[1] for c in runs] != list(range(1, len(runs) + 1)) or [c[2] for c in runs] != [c[1] for c in runs]:
            tokens.append(job_id)  # a token given twice, a claim nobody made, an attempt not counted
        over_max += [job_id for c in runs if not 1 <= c[2] <= c[3] == MAX_ATTEMPTS]  # type: ignore[operator]
        for before, after in pairwise(runs):
            # The earlier lease ended when its ack was accepted, else when its deadline passed and
            # recover() took it back; the later claim was answered after that, never before.
            ended = before[7] if before[8] else before[6]
            if after[5] < ended:  # type: ignore[operator]
                overlaps.append((job_id, before, after))
    assert tokens == []
    assert over_max == []
    assert overlaps == []

    records = {r.id: r for i in range(0, JOBS, 5000) for r in store.get_many([m.id for m in messages[i:i + 5000]]) if r}
    assert len(records) == JOBS
    # The store agrees: every claim counted once, the state is what the last claim's outcome made.
    after_last = {"succeeded": {"succeeded"}, "failed": {"failed"}, "scheduled": {"scheduled", "queued"},
                  None: {"running", "queued", "failed"}}  # abandoned, or its late ack refused
    wrong = []
    for job_id, record in records.items():
        runs = by_job.get(job_id, [])
        last = runs[-1] if runs else None
        allowed = {"queued"} if last is None else after_last[last[9] if last[8] else None]
        if (record.attempts, record.token) != (len(runs), len(runs)) or record.state not in allowed \
                or (record.state == "failed" and record.attempts != MAX_ATTEMPTS):
            wrong.append((job_id, record.state, record.attempts, record.token, last))
    assert wrong == []
    states: dict[str, int] = defaultdict(int)
    for record in records.values():
        states[record.state] += 1
    print(f"{CLAIMERS} claimers, {len(claims)} claims of {len(by_job)} jobs in {took:.1f}s "
          f"({len(claims) / took:.0f} claims/s); {sum(1 for c in claims if c[7] is None)} leases abandoned, "
          f"{sum(1 for c in claims if c[8] is False)} acks refused; {dict(states)}")
