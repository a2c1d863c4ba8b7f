"""``zmq://`` figures: ``python -m bench.zmq_bench [--rounds 3] [--phases drain,latency]`` (from the repo root).

Runs ``python -m bench`` (the harness, 2 worker processes) on each configuration in turn, round
after round, so that a shared machine's noise falls on every configuration alike, and prints one
JSON object: every run's figures and, per configuration, their medians.

Configurations: ``zmq+redis`` (``zmq://`` carrying a Redis store's jobs), ``zmq+sqlite`` (a fresh
SQLite file per run), ``zmq+postgres`` (asked for by ``--configs``: a PostgreSQL schema per run)
and, for reference on the same machine and minute, ``redis`` (the Redis store claiming natively).
The store is named by ``CONVEYOR_STORE``, as an application would.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REDIS = os.environ.get("CONVEYOR_BENCH_REDIS", "redis://127.0.0.1:6379/1")
POSTGRES = os.environ.get("CONVEYOR_BENCH_POSTGRES", "postgresql://127.0.0.1:5432/test")
FIGURES = {
    "drain": ("jobs_per_s", "steady_jobs_per_s", "startup_s", "cpu_s_per_1000_jobs", "peak_pss_mb"),
    "latency": ("p50_ms", "p90_ms", "p99_ms"),
    "enqueue": ("jobs_per_s",),
    "bulk": ("jobs_per_s",),
}
#: The bars of issue #13 for zmq:// + Redis (2 worker processes).
TARGETS = {"drain.jobs_per_s": (">=", 10_000), "latency.p50_ms": ("<=", 1.0)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(name: str, phases: str, folder: str, extra: list[str]) -> dict[str, Any]:
    """One ``python -m bench`` run of configuration ``name``; its results."""
    env = {k: v for k, v in os.environ.items() if k not in ("CONVEYOR_URL", "CONVEYOR_STORE")}
    schema = None
    if name == "redis":
        url = REDIS
    else:
        url = f"zmq://127.0.0.1:{free_port()}"
        if name == "zmq+postgres":  # a schema of its own, migrated first and dropped afterwards
            from conveyor.brokers.postgres import PostgresBroker

            schema = f"{POSTGRES}{'&' if '?' in POSTGRES else '?'}schema=bench_zmq_{time.monotonic_ns()}"
            PostgresBroker(schema).migrate()
            env["CONVEYOR_STORE"] = schema
        else:
            env["CONVEYOR_STORE"] = REDIS if name == "zmq+redis" else f"sqlite:///{tempfile.mkdtemp(dir=folder)}/bench.db"
    out = os.path.join(folder, f"{name}-{time.monotonic_ns()}.json")
    command = [sys.executable, "-m", "bench", "--url", url, "--phases", phases, "--out", out, *extra]
    print(f"bench.zmq_bench: {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    try:
        subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=False)
    finally:
        if schema is not None:
            from conveyor.brokers.postgres import PostgresBroker

            PostgresBroker(schema).drop()
    with open(out) as f:
        report = json.load(f)
    results = report.get("results", {})
    return {phase: {k: results.get(phase, {}).get(k) for k in FIGURES[phase]}
            | {"other_busy_pct": (results.get(phase, {}).get("machine") or {}).get("other_busy_pct")}
            for phase in phases.split(",")}


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase in runs[0]:
        out[phase] = {}
        for key in runs[0][phase]:
            values = [r[phase][key] for r in runs if isinstance(r[phase].get(key), (int, float))]
            out[phase][key] = round(statistics.median(values), 3) if values else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--phases", default="drain,latency")
    ap.add_argument("--configs", default="zmq+redis,zmq+sqlite,redis")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("bench_args", nargs="*", help="more options for python -m bench (after --)")
    args = ap.parse_args()
    configs = args.configs.split(",")
    folder = tempfile.mkdtemp(prefix="conveyor-bench-zmq-")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    try:
        for _ in range(args.rounds):
            for name in configs:
                runs[name].append(one_run(name, args.phases, folder, args.bench_args))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    summary = {name: medians(r) for name, r in runs.items()}
    report = {"rounds": args.rounds, "phases": args.phases, "redis": REDIS, "medians": summary, "runs": runs,
              "targets": {name: {key: [op, bar, _get(summary[name], key)] for key, (op, bar) in TARGETS.items()}
                          for name in summary if name.startswith("zmq")}}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


def _get(figures: dict[str, Any], key: str) -> Any:
    phase, _, name = key.partition(".")
    return figures.get(phase, {}).get(name)


if __name__ == "__main__":
    sys.exit(main())
