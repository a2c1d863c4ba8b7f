"""Producer side of the benchmark, run by the harness as a child process (one per phase), so each
phase gets a fresh interpreter, a fresh app and the broker URL of that phase.

``python -m bench.producer MODE --n N [--batch B] [--warmup W]`` with ``CONVEYOR_BENCH_URL`` set;
prints one line ``RESULT {json}`` on stdout. Modes:

- ``enqueue``: N single ``noop.enqueue(i)`` calls; the clock runs around the loop only.
- ``bulk``: N jobs through ``noop.enqueue_many`` in batches of B (list building included).
- ``latency``: with a worker running, W warm-up then N sequential ``noop.enqueue(i).result(timeout=10)``.
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


def run_enqueue(n: int) -> dict[str, Any]:
    app, noop = _app()
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        noop.enqueue(i)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    app.close()
    return {"api": "noop.enqueue(i)", "n": n, "elapsed_s": elapsed, "jobs_per_s": n / elapsed,
            "cpu_s": cpu, "cpu_us_per_job": cpu * 1e6 / n}


def run_bulk(n: int, batch: int) -> dict[str, Any]:
    app, noop = _app()
    c0, t0 = time.process_time(), time.perf_counter()
    for start in range(0, n, batch):
        noop.enqueue_many([(i,) for i in range(start, min(n, start + batch))])
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    app.close()
    return {"api": f"noop.enqueue_many([(i,) ...]) in batches of {batch}", "n": n, "batch": batch,
            "elapsed_s": elapsed, "jobs_per_s": n / elapsed, "cpu_s": cpu, "cpu_us_per_job": cpu * 1e6 / n}


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
