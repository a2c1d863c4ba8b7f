"""Producer side of the benchmark, run by the harness as a child process (one per phase), so each
phase gets a fresh interpreter, a fresh app and the broker URL of that phase.

``python -m bench.producer MODE --n N [--batch B] [--warmup W]`` with ``CONVEYOR_BENCH_URL`` set;
prints one line ``RESULT {json}`` on stdout. Modes:

- ``enqueue``: N single ``noop.enqueue(i)`` calls; the clock runs around the loop only.
- ``bulk``: N jobs through ``noop.enqueue_many`` in batches of B (list building included).
- ``latency``: with a worker running, W warm-up then N sequential ``noop.enqueue(i).result(timeout=10)``.

``enqueue`` and ``bulk`` also time this machine's *floor* in the same process, just before and just
after Conveyor's loop: the least a client library can do to store the same N items on the same
server (see :func:`floor`). Their ratio says how much of the figure is Conveyor's and how much the
machine's, on a VM whose speed changes from hour to hour.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import sys
import time
from typing import Any

RESULT_PREFIX = "RESULT "


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100), the same method as the peer harness."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def _app() -> Any:
    from bench.tasks import app, noop

    if not os.environ.get("CONVEYOR_BENCH_URL"):
        raise SystemExit("CONVEYOR_BENCH_URL is not set")
    app.open()  # connecting (and, on a fresh SQLite file, creating the schema) is set-up, not timed
    return app, noop


def floor(url: str, n: int, batch: int | None) -> tuple[str, float] | None:
    """Items/s of the plainest client loop storing ``n`` small items where ``url`` points, one per
    round trip (``batch`` None) or ``batch`` per round trip: for Redis, redis-py's ``LPUSH`` (in a
    ``pipeline(transaction=False)`` for batches), as the peer harness's floor does; for SQLite, a
    one-column ``INSERT`` committed per item (or per batch) in a file beside the phase's database,
    with Conveyor's pragmas (WAL, ``synchronous`` as in the URL, FULL by default). None for other
    brokers. Returns (what was timed, items/s)."""
    item = b'{"args":[1],"kwargs":{}}'
    if url.startswith(("redis:", "rediss:")):
        import redis

        from conveyor.brokers.redis import parse_url

        client = redis.Redis.from_url(parse_url(url)[0])
        key = f"conveyor-bench-floor:{os.getpid()}"
        client.delete(key)
        t0 = time.perf_counter()
        if batch is None:
            what = "redis-py LPUSH, one per round trip"
            for _ in range(n):
                client.lpush(key, item)
        else:
            what = f"redis-py pipeline of {batch} LPUSH per round trip"
            for start in range(0, n, batch):
                pipe = client.pipeline(transaction=False)
                for _ in range(min(batch, n - start)):
                    pipe.lpush(key, item)
                pipe.execute()
        elapsed = time.perf_counter() - t0
        client.delete(key)
        client.close()
        return what, n / elapsed
    if url.startswith("sqlite:"):
        import sqlite3
        from urllib.parse import parse_qs

        rest, _, query = url[len("sqlite://"):].partition("?")  # sqlite:///rel or sqlite:////abs
        sync = (parse_qs(query).get("synchronous") or ["full"])[0].upper()
        if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            sync = "FULL"
        path = f"{os.path.abspath(rest[1:])}.floor-{os.getpid()}"
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={sync}")
        db.execute("CREATE TABLE t (x BLOB)")
        per = batch or 1
        t0 = time.perf_counter()
        for start in range(0, n, per):
            db.execute("BEGIN")
            db.executemany("INSERT INTO t (x) VALUES (?)", [(item,)] * min(per, n - start))
            db.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        db.close()
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(path + suffix)
            except OSError:
                pass
        what = f"sqlite3 INSERT, {'one' if batch is None else batch} per commit, synchronous={sync}"
        return what, n / elapsed
    return None


def _with_floor(res: dict[str, Any], url: str, n: int, batch: int | None,
                before: tuple[str, float] | None) -> dict[str, Any]:
    after = floor(url, n, batch)
    if before is not None and after is not None:
        mean = (before[1] + after[1]) / 2.0
        res["floor"] = {"what": before[0], "before_per_s": before[1], "after_per_s": after[1],
                        "vs_floor": res["jobs_per_s"] / mean}
    return res


def run_enqueue(n: int) -> dict[str, Any]:
    app, noop = _app()
    url = os.environ["CONVEYOR_BENCH_URL"]
    before = floor(url, n, None)
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        noop.enqueue(i)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    app.close()
    res = {"api": "noop.enqueue(i)", "n": n, "elapsed_s": elapsed, "jobs_per_s": n / elapsed,
           "cpu_s": cpu, "cpu_us_per_job": cpu * 1e6 / n}
    return _with_floor(res, url, n, None, before)


def run_bulk(n: int, batch: int) -> dict[str, Any]:
    app, noop = _app()
    url = os.environ["CONVEYOR_BENCH_URL"]
    before = floor(url, n, batch)
    c0, t0 = time.process_time(), time.perf_counter()
    for start in range(0, n, batch):
        noop.enqueue_many([(i,) for i in range(start, min(n, start + batch))])
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    app.close()
    res = {"api": f"noop.enqueue_many([(i,) ...]) in batches of {batch}", "n": n, "batch": batch,
           "elapsed_s": elapsed, "jobs_per_s": n / elapsed, "cpu_s": cpu, "cpu_us_per_job": cpu * 1e6 / n}
    return _with_floor(res, url, n, batch, before)


def run_latency(n: int, warmup: int, first_timeout: float, timeout: float) -> dict[str, Any]:
    app, noop = _app()
    t_start = time.perf_counter()
    for w in range(warmup):
        value = noop.enqueue(-1 - w).result(timeout=first_timeout if w == 0 else timeout)
        if value != -1 - w:
            raise RuntimeError(f"warm-up job returned {value!r}, expected {-1 - w}")
    warm_s = time.perf_counter() - t_start
    gc.collect()
    lat: list[float] = []
    wrong = 0
    for i in range(n):
        t0 = time.perf_counter()
        value = noop.enqueue(i).result(timeout=timeout)
        lat.append(time.perf_counter() - t0)
        if value != i:
            wrong += 1
    app.close()
    ms = [x * 1000.0 for x in lat]
    return {
        "api": "noop.enqueue(i).result(timeout=10)", "n": n, "warmup": warmup,
        "warmup_s": warm_s, "wrong_results": wrong,
        "p50_ms": pct(ms, 50), "p90_ms": pct(ms, 90), "p99_ms": pct(ms, 99),
        "max_ms": max(ms), "mean_ms": statistics.fmean(ms), "min_ms": min(ms),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.producer")
    ap.add_argument("mode", choices=["enqueue", "bulk", "latency"])
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--first-timeout", type=float, default=60.0)
    ap.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args(argv)
    if a.mode == "enqueue":
        res = run_enqueue(a.n)
    elif a.mode == "bulk":
        res = run_bulk(a.n, a.batch)
    else:
        res = run_latency(a.n, a.warmup, a.first_timeout, a.timeout)
    res["mode"] = a.mode
    res["pid"] = os.getpid()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    res["process_cpu_s"] = usage.ru_utime + usage.ru_stime  # whole process, imports included
    sys.stdout.write(RESULT_PREFIX + json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
