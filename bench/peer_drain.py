"""The peer harness's drain, Conveyor alone, for quick A/B runs of worker flags.

``python -m bench.peer_drain [--peers ../shared/bench/peers] [--n 20000] [--reps 1] [--incr-port P]
[-- worker flags ...]`` enqueues N jobs of the peers' task (INCR ``bench:done``, return the argument,
``peers/conveyor/tasks.py``) on Redis database 0, starts ``conveyor worker tasks:app --concurrency 2``
plus the given flags, and times it from ``Popen`` until the counter reaches N, as the peer harness
does. Prints one JSON line per run: drain and steady (10%..90%) jobs/s, the worker tree's CPU per
job and Redis's CPU per job (``INFO cpu``). **It FLUSHDBs database 0**, as the peer harness does.

``--incr-port`` sends the task's INCR to another ``redis-server`` (which the caller starts), to see
how much of a job's time is spent queued behind Conveyor's own scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # the peers' folder is read-only

TASKS = '''\
import os

import redis
from benchcommon import REDIS_URL

from conveyor import Conveyor

app = Conveyor(REDIS_URL)
_client = None


@app.task
def incr(x: int) -> int:
    global _client
    if _client is None:
        _client = redis.Redis(port=int(os.environ.get("PEER_DRAIN_INCR_PORT", "6379")))
    _client.incr("bench:done")
    return x
'''


def run(peers: Path, n: int, incr_port: int | None, flags: list[str], folder: Path) -> dict[str, Any]:
    import psutil
    import redis

    common = str(peers / "common")
    if incr_port is None:
        task_dir = str(peers / "conveyor")  # the peers' own task module, unchanged
    else:
        (folder / "tasks.py").write_text(TASKS)
        task_dir = str(folder)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([task_dir, common]), PYTHONDONTWRITEBYTECODE="1")
    if incr_port is not None:
        env["PEER_DRAIN_INCR_PORT"] = str(incr_port)
    queue = redis.Redis()
    counter = redis.Redis(port=incr_port or 6379)
    queue.flushdb()
    counter.delete("bench:done")
    subprocess.run([sys.executable, "-c", "import sys; from tasks import incr\n"
                    f"for i in range(0, {n}, 1000): incr.enqueue_many([(j,) for j in range(i, min({n}, i + 1000))])"],
                   env=env, cwd=task_dir, check=True)

    def redis_cpu() -> float:
        info = queue.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    cpu_before = redis_cpu()
    conveyor = Path(sys.executable).with_name("conveyor")
    started = time.perf_counter()
    proc = subprocess.Popen([str(conveyor), "worker", "tasks:app", "--concurrency", "2", *flags], cwd=task_dir,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tree = psutil.Process(proc.pid)
    marks: dict[float, float] = {}
    cpu: dict[int, float] = {}
    try:
        while True:
            done = int(counter.get("bench:done") or 0)
            now = time.perf_counter()
            for fraction in (0.1, 0.9):
                if done >= fraction * n:
                    marks.setdefault(fraction, now)
            try:
                for p in [tree, *tree.children(recursive=True)]:
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
            if done >= n:
                break
            if proc.poll() is not None:
                raise SystemExit(f"the worker exited with {proc.returncode}")
            time.sleep(0.01)
    finally:
        elapsed = time.perf_counter() - started
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return {"drain_jobs_per_s": round(n / elapsed), "steady_jobs_per_s": round(0.8 * n / (marks[0.9] - marks[0.1])),
            "worker_cpu_ms_per_job": round(sum(cpu.values()) / n * 1000, 3),
            "redis_cpu_us_per_job": round((redis_cpu() - cpu_before) / n * 1e6, 1),
            "incr_port": incr_port or 6379, "flags": flags}


def main() -> None:
    import tempfile

    default_peers = Path(__file__).resolve().parents[2] / "shared" / "bench" / "peers"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=Path, default=default_peers, help="the peer harness folder")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--incr-port", type=int, default=None)
    ap.add_argument("flags", nargs="*", help="more `conveyor worker` flags (after --)")
    a = ap.parse_args()
    if not (a.peers / "conveyor" / "tasks.py").exists():
        raise SystemExit(f"no peer harness at {a.peers} (give --peers)")
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(a.reps):
            print(json.dumps(run(a.peers, a.n, a.incr_port, a.flags, Path(folder))), flush=True)


if __name__ == "__main__":
    main()
