"""One claimer of ``test_postgres_claimers.py``, run as a process of its own: ``python
pg_claimer.py URL CLAIMS SEED OUT``. It leases jobs from the PostgreSQL store in batches of 1 to
32 until it made CLAIMS claims, and settles them as a worker would: most succeed, some fail
(retried while attempts remain, failed on the last), a few are abandoned (their lease runs out
and ``recover()`` puts them back). Each claim is one JSON line in OUT: ``[job id, token, attempt, max attempts,
fetch sent, fetch answered, lease deadline, ack sent, ack accepted, outcome]`` (the last three
null for an abandoned lease).
"""

from __future__ import annotations

import random
import sys
import time

import orjson

from conveyor.brokers import Outcome
from conveyor.brokers.postgres import PostgresBroker

LEASE = 1.0
RETRY = 0.3  # of the claims: fail (retried while attempts remain)
ABANDON = 0.005  # of the claims: never settled (the lease runs out)


def main(url: str, target: int, seed: int, out: str) -> None:
    rng = random.Random(seed)
    store = PostgresBroker(url).fork()  # a store of its own: its own pool, as each pool member has
    store.open()
    consumer = f"claimer-{seed}"
    rows: list[list[object]] = []
    claims = 0
    next_recover = 0.0
    try:
        while claims < target:
            if time.monotonic() >= next_recover:
                next_recover = time.monotonic() + 1.0  # as a supervisor does
                store.recover()
            sent = time.time()
            leases = store.fetch(["default"], min(rng.randint(1, 32), target - claims), LEASE, consumer)
            answered = time.time()
            if not leases:
                time.sleep(0.02)  # everything left is leased by others or abandoned: wait for recover()
                continue
            claims += len(leases)
            outcomes, settled = [], []
            for lease in leases:
                row: list[object] = [lease.job_id, lease.token, lease.attempt, lease.max_attempts, sent, answered,
                                     lease.deadline, None, None, None]
                rows.append(row)
                draw = rng.random()
                if draw < ABANDON:
                    continue
                if draw < ABANDON + RETRY:
                    last = lease.attempt >= lease.max_attempts
                    outcomes.append(Outcome(lease.job_id, lease.token, "failed" if last else "scheduled",
                                            error={"type": "Boom", "message": "on purpose"},
                                            run_at=None if last else time.time()))
                else:
                    outcomes.append(Outcome(lease.job_id, lease.token, "succeeded", result=b"1"))
                settled.append(row)
            acked = time.time()
            for row, outcome, accepted in zip(settled, outcomes, store.ack(outcomes), strict=True):
                row[7], row[8], row[9] = acked, accepted, outcome.state
    finally:
        store.close()
        with open(out, "wb") as f:
            f.write(b"\n".join(orjson.dumps(row) for row in rows))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
