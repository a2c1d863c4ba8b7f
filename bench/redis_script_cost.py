"""Redis time per job of the Redis broker's fetch and ack scripts, alone in one client.

``python -m bench.redis_script_cost [--url redis://127.0.0.1:6379/12] [--n 20000] [--batch 128]``
enqueues N no-op jobs under a prefix of its own, then fetches and acks them in batches, reading the
``EVALSHA`` time from ``INFO commandstats`` around every call (Redis's own time, without the
network). Prints the microseconds per job of each script and of the commands run inside them.
**It resets Redis's command statistics** (``CONFIG RESETSTAT``); the jobs are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid


def main() -> None:
    import redis

    from conveyor import Conveyor
    from conveyor.brokers import Outcome

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    app = Conveyor(f"{a.url}{'&' if '?' in a.url else '?'}prefix=scriptcost-{uuid.uuid4().hex[:8]}")

    @app.task(name="noop")
    def noop(x: int) -> int:
        return x

    for start in range(0, a.n, 1000):
        noop.enqueue_many([(i,) for i in range(start, min(a.n, start + 1000))])
    broker = app.broker
    stats = redis.Redis.from_url(a.url.split("?")[0])

    def script_us() -> int:
        return int(stats.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))

    stats.config_resetstat()
    fetch_us = ack_us = 0
    try:
        while True:
            before = script_us()
            leases = broker.fetch(["default"], a.batch, 30.0, "script-cost")
            fetched = script_us()
            fetch_us += fetched - before
            if not leases:
                break
            now = time.time()
            broker.ack([Outcome(lease.job_id, lease.token, "succeeded", b"1", None, None, now, now)
                        for lease in leases])
            ack_us += script_us() - fetched
        inner = {name.removeprefix("cmdstat_"): round(v["usec"] / a.n, 2)
                 for name, v in stats.info("commandstats").items()
                 if name not in ("cmdstat_evalsha", "cmdstat_info", "cmdstat_config") and v["usec"] / a.n >= 0.01}
        print(json.dumps({"batch": a.batch, "fetch_us_per_job": round(fetch_us / a.n, 1),
                          "ack_us_per_job": round(ack_us / a.n, 1), "inside_us_per_job": inner}))
    finally:
        broker.drop()  # type: ignore[attr-defined]
        app.close()


if __name__ == "__main__":
    main()
