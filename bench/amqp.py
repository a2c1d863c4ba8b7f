"""``amqp://`` and ``stomp://`` figures beside Celery on the same RabbitMQ (from the repo root):

    .venv/bin/python -m bench.amqp [--rounds 3] [--n 20000] [--configs amqp+redis,celery]

Each round runs every configuration once, in turn, so that a shared machine's noise falls on all
alike; the JSON printed holds every run and, per configuration, the medians. Every run drains N
pre-enqueued no-op jobs with 2 worker processes:

* ``amqp+redis``, ``amqp+sqlite``, ``stomp+redis``, ``stomp+sqlite`` (and, asked for by ``--configs``,
  ``amqp+postgres``, ``stomp+postgres``: a schema of their own): ``python -m bench --phases
  drain`` (the harness: ``conveyor worker --concurrency 2``, timed from its ``Popen`` until the store
  counts N succeeded), on queues of a prefix of their own (deleted afterwards), the store named
  by ``CONVEYOR_STORE`` as an application would (Redis database 1 under a prefix of its own, or a
  fresh SQLite file).
* ``celery``: Celery (``bench/amqp_celery.py``) on the same RabbitMQ, ``celery worker -P prefork
  -c 2`` as the peer harness runs it, the same no-op task, each result stored in Redis (as
  Conveyor stores each outcome); timed from the worker's ``Popen`` until N results are stored.
* ``celery-noresult``: the same without a result backend (Celery's default), timed until the
  queue has no ready message left — a few prefetched no-ops short of done, so slightly in
  Celery's favour.

Celery is not a dependency of Conveyor: ``pip install celery`` into the environment first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import pika
import redis
import uuid_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMQP = os.environ.get("CONVEYOR_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
STOMP = os.environ.get("CONVEYOR_BENCH_STOMP", "stomp://guest:guest@127.0.0.1:61613/")
REDIS = os.environ.get("CONVEYOR_BENCH_REDIS", "redis://127.0.0.1:6379/1")
CELERY_RESULTS = os.environ.get("CONVEYOR_BENCH_CELERY_RESULTS", "redis://127.0.0.1:6379/13")
POSTGRES = os.environ.get("CONVEYOR_BENCH_POSTGRES", "postgresql://127.0.0.1:5432/test")
CONFIGS = ("amqp+redis", "celery", "celery-noresult", "amqp+sqlite", "stomp+redis", "stomp+sqlite")
#: Not in the default round: ``--configs`` adds them (a PostgreSQL server must be there).
POSTGRES_CONFIGS = ("amqp+postgres", "stomp+postgres")
FIGURES = ("jobs_per_s", "steady_jobs_per_s", "startup_s", "cpu_s_per_1000_jobs")
#: The bars of issue #13 for amqp:// + Redis (2 worker processes).
TARGET_JOBS_PER_S = 5_000
TARGET_CELERY_RATIO = 2.0


def delete_queues(names: list[str]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP))
    try:
        channel = connection.channel()
        for name in names:
            channel.queue_delete(name)
    finally:
        connection.close()


def conveyor_run(name: str, n: int, folder: str, extra: list[str]) -> dict[str, Any]:
    """One ``python -m bench --phases drain`` run of ``transport+store``; its drain figures."""
    transport, store = name.split("+")
    prefix = f"bench-{uuid_utils.uuid7().hex}"
    base = AMQP if transport == "amqp" else STOMP
    url = f"{base}{'&' if '?' in base else '?'}prefix={prefix}."
    env = {k: v for k, v in os.environ.items() if k not in ("CONVEYOR_URL", "CONVEYOR_STORE")}
    if store == "redis":
        env["CONVEYOR_STORE"] = f"{REDIS}{'&' if '?' in REDIS else '?'}prefix={prefix}"
    elif store == "postgres":  # a schema of its own, migrated first and dropped afterwards
        from conveyor.brokers.postgres import PostgresBroker

        env["CONVEYOR_STORE"] = f"{POSTGRES}{'&' if '?' in POSTGRES else '?'}schema={prefix.replace('-', '_')}"
        PostgresBroker(env["CONVEYOR_STORE"]).migrate()
    else:
        env["CONVEYOR_STORE"] = f"sqlite:///{tempfile.mkdtemp(dir=folder)}/bench.db"
    out = os.path.join(folder, f"{name}-{time.monotonic_ns()}.json")
    command = [sys.executable, "-m", "bench", "--url", url, "--phases", "drain", "--n", str(n), "--out", out,
               "--retries", "0", "--quiet-wait", "10", *extra]
    print(f"bench.amqp: {name}", file=sys.stderr, flush=True)
    try:
        subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=False, timeout=900)
        with open(out) as f:
            drain = json.load(f).get("results", {}).get("drain", {})
    finally:
        delete_queues([f"{prefix}.default"])
        if store == "redis":
            from conveyor.brokers.redis import RedisBroker

            RedisBroker(env["CONVEYOR_STORE"]).drop()
        elif store == "postgres":
            from conveyor.brokers.postgres import PostgresBroker

            PostgresBroker(env["CONVEYOR_STORE"]).drop()
    return {k: drain.get(k) for k in FIGURES} | {"other_busy_pct": (drain.get("machine") or {}).get("other_busy_pct")}


def celery_run(n: int, with_results: bool, folder: str) -> dict[str, Any]:
    """Celery on the same RabbitMQ: prefill N no-op tasks, then time a 2-process worker draining them."""
    queue = f"bench-celery-{uuid_utils.uuid7().hex}"
    # A folder of its own on the path: bench/ itself would shadow py-amqp (Celery's client) with amqp.py.
    shutil.copy(os.path.join(ROOT, "bench", "amqp_celery.py"), folder)
    env = dict(os.environ, BENCH_CELERY_BROKER=AMQP, BENCH_CELERY_QUEUE=queue,
               BENCH_CELERY_RESULTS=CELERY_RESULTS if with_results else "", PYTHONPATH=folder)
    results = redis.Redis.from_url(CELERY_RESULTS)
    results.flushdb()
    celery = os.path.join(os.path.dirname(sys.executable), "celery")
    print(f"bench.amqp: celery{'' if with_results else '-noresult'}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "amqp_celery", "prefill", str(n)], env=env, check=True, timeout=600,
                   cwd=folder)
    connection = pika.BlockingConnection(pika.URLParameters(AMQP))
    channel = connection.channel()

    def ready() -> int:
        return int(channel.queue_declare(queue, passive=True).method.message_count)

    assert ready() == n, f"expected {n} ready messages, found {ready()}"
    start = time.perf_counter()
    worker = subprocess.Popen([celery, "-A", "amqp_celery", "worker", "-P", "prefork", "-c", "2", "-l", "WARNING"],
                              env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    marks: list[tuple[float, int]] = []
    try:
        while True:
            done = int(results.dbsize()) if with_results else n - ready()
            now = time.perf_counter() - start
            marks.append((now, done))
            if done >= n:
                break
            if now > 600:
                raise RuntimeError(f"celery drained {done} of {n} in 600 s")
            time.sleep(0.02)
    finally:
        os.killpg(worker.pid, 15)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, 9)
            worker.wait(10)
        channel.queue_delete(queue)
        connection.close()
        results.flushdb()
    elapsed = marks[-1][0]
    first = next(t for t, d in marks if d > 0)
    t10 = next(t for t, d in marks if d >= n * 0.1)
    t90 = next(t for t, d in marks if d >= n * 0.9)
    return {"jobs_per_s": round(n / elapsed, 1), "steady_jobs_per_s": round(0.8 * n / max(t90 - t10, 1e-9), 1),
            "startup_s": round(first, 3), "cpu_s_per_1000_jobs": None, "other_busy_pct": None}


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        out[key] = round(statistics.median(values), 3) if values else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("bench_args", nargs="*", help="more options for python -m bench (after --)")
    args = ap.parse_args()
    configs = args.configs.split(",")
    folder = tempfile.mkdtemp(prefix="conveyor-bench-amqp-")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    try:
        for _ in range(args.rounds):
            for name in configs:
                if name.startswith("celery"):
                    runs[name].append(celery_run(args.n, name == "celery", folder))
                else:
                    runs[name].append(conveyor_run(name, args.n, folder, args.bench_args))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    summary = {name: medians(r) for name, r in runs.items()}
    report: dict[str, Any] = {"rounds": args.rounds, "n": args.n, "medians": summary, "runs": runs}
    ours = summary.get("amqp+redis", {}).get("jobs_per_s")
    peers = [summary[c]["jobs_per_s"] for c in ("celery", "celery-noresult") if summary.get(c, {}).get("jobs_per_s")]
    if ours:
        report["targets"] = {"amqp+redis jobs_per_s": [">=", TARGET_JOBS_PER_S, ours]}
        if peers:
            report["targets"]["amqp+redis / fastest celery"] = [">=", TARGET_CELERY_RATIO, round(ours / max(peers), 2)]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
