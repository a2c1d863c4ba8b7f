"""What an idle worker costs, and how fast it picks up a job after idling.

``python -m bench.idle_cost [--url sqlite:///PATH] [--seconds 20] [--pickups 100]`` starts
``conveyor worker bench.tasks:app -c 2 --pool process`` on a fresh database (a new SQLite file in a
temporary folder unless ``--url`` names another broker), lets it settle, then:

- **idle CPU**: the CPU time of each pool process and of the supervisor over ``--seconds``, as a
  percentage of one core;
- **pickup**: ``--pickups`` jobs enqueued one every 100 ms (the worker idles in between); pickup is
  ``started_at - created_at`` of each job's record (p50, p90, max in ms).

Prints one JSON line. For an A/B against an older commit, run it with
``PYTHONPATH=<a worktree of that commit>/src`` (the worker inherits it), alternating with runs
without, as ``bench.ab`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="broker URL (default: a fresh SQLite file)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--pickups", type=int, default=100)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    a = parser.parse_args(argv)
    url = a.url or f"sqlite:///{tempfile.mkdtemp(prefix='conveyor-idle-')}/idle.db"
    os.environ["CONVEYOR_BENCH_URL"] = url
    exe = Path(sys.executable).with_name("conveyor")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "conveyor.cli"]
    proc = subprocess.Popen([*command, "worker", "bench.tasks:app", "-c", "2", "--pool", "process"],
                            cwd=ROOT, env={**os.environ, "CONVEYOR_LOG_LEVEL": "WARNING"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sys.path.insert(0, str(ROOT))
        from bench.tasks import app, noop

        app.open()
        noop.enqueue(0).result(timeout=30)  # the worker is up
        time.sleep(a.settle)
        supervisor = psutil.Process(proc.pid)
        children = supervisor.children(recursive=True)
        started = time.monotonic()
        before = {p.pid: _cpu(p) for p in [supervisor, *children]}
        time.sleep(a.seconds)
        elapsed = time.monotonic() - started
        after = {p.pid: _cpu(p) for p in [supervisor, *children]}
        per_child = sorted(100 * (after[c.pid] - before[c.pid]) / elapsed for c in children)

        jobs = []
        for i in range(a.pickups):
            time.sleep(0.1)
            jobs.append(noop.enqueue(i))
        for job in jobs:
            job.result(timeout=10)
        records = [app.broker.get(job.id) for job in jobs]
        ms = sorted(1000 * (r.started_at - r.created_at) for r in records if r and r.started_at is not None)
        print(json.dumps({
            "url": url.split("?")[0], "conveyor": str(Path(sys.modules["conveyor"].__file__ or "").parent),
            "idle_seconds": round(elapsed, 1),
            "idle_cpu_pct_per_pool_process": [round(x, 2) for x in per_child],
            "idle_cpu_pct_supervisor": round(100 * (after[proc.pid] - before[proc.pid]) / elapsed, 2),
            "pickup_ms": {"p50": round(statistics.median(ms), 2), "p90": round(ms[int(0.9 * len(ms)) - 1], 2),
                          "max": round(ms[-1], 2), "n": len(ms)},
        }), flush=True)
        app.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
