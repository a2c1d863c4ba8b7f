"""Load benchmark of the dashboard's live updates: ``python -m bench.web_sse`` (from the repository root).

Starts ``conveyor web`` (waitress, the production server) and ``conveyor worker --concurrency 2``
on a fresh SQLite file, connects N Server-Sent Events clients (default 50) to ``/api/events``,
enqueues J jobs (default 10,000, paced at ``--rate`` jobs/s; 0 = all at once), and checks that
every client saw every job reach ``succeeded``. Meanwhile a separate process (so that the readers'
threads do not slow its clock) times ``GET /api/jobs`` again and again. Prints one JSON object.

Target (issue #4): p99 of ``GET /api/jobs`` under 100 ms while the clients are connected and the
jobs run. Exit status 0 when every client saw every job and the target was met.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

TASKS = '''\
import os
from conveyor import Conveyor

app = Conveyor(os.environ["CONVEYOR_URL"])


@app.task(name="bench.noop")
def noop(x: int) -> int:
    return x
'''
SUCCEEDED = re.compile(rb'data: \{"id":"([^"]+)"[^\n]*"state":"succeeded"')
TARGET_P99_MS = 100.0
_BIN = Path(sys.executable).with_name("conveyor")
CONVEYOR = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "conveyor.cli"]


def log(message: str) -> None:
    print(f"[web_sse {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentiles(values: list[float]) -> dict[str, Any]:
    """Nearest-rank percentiles of ``values`` (milliseconds)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 100)) - 1))], 2)

    return {"n": len(ordered), "p50": rank(50), "p90": rank(90), "p99": rank(99), "max": round(ordered[-1], 2),
            "mean": round(sum(ordered) / len(ordered), 2)}


class SSEClient(threading.Thread):
    """One live-update client: reads ``/api/events?kind=job`` and notes the jobs seen to succeed."""

    def __init__(self, port: int, token: str, index: int) -> None:
        super().__init__(name=f"sse-{index}", daemon=True)
        self.port, self.token = port, token
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.succeeded: set[bytes] = set()
        self.events = 0
        self.resets = 0
        self.bytes = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            conn.request("GET", "/api/events?kind=job", headers={"Authorization": f"Bearer {self.token}"})
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError(f"GET /api/events answered {response.status}")
            self.connected.set()
            pending = b""
            while not self.stop.is_set():
                chunk = response.read1(65536)
                if not chunk:
                    raise RuntimeError("the server closed the stream")
                self.bytes += len(chunk)
                data = pending + chunk
                cut = data.rfind(b"\n\n") + 2  # parse whole events only
                whole, pending = data[:cut], data[cut:]
                self.events += whole.count(b"\nevent: ") + whole.startswith(b"event: ")
                self.resets += whole.count(b"event: reset\n")
                self.succeeded.update(SUCCEEDED.findall(whole))
            conn.close()
        except Exception as exc:
            if not self.stop.is_set():
                self.error = f"{type(exc).__name__}: {exc}"
            self.connected.set()


def probe_latency(port: int, token: str, stop: Any, out: Any, pause: float) -> None:
    """In its own process: ``GET /api/jobs`` on a kept-alive connection until ``stop`` is set;
    sends the list of latencies (ms) and the statuses other than 200 to ``out``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[tuple[float, float]] = []  # (wall clock at the start, ms)
    bad: dict[int, int] = {}
    while not stop.is_set():
        at, started = time.time(), time.perf_counter()
        conn.request("GET", "/api/jobs", headers=headers)
        response = conn.getresponse()
        body = response.read()
        latencies.append((at, (time.perf_counter() - started) * 1000))
        if response.status != 200 or not body.startswith(b'{"jobs":'):
            bad[response.status] = bad.get(response.status, 0) + 1
        time.sleep(pause)
    conn.close()
    out.put((latencies, bad))


class Latency:
    """The latency prober process, started and stopped around a phase."""

    def __init__(self, port: int, token: str, pause: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.stop = ctx.Event()
        self.out: Any = ctx.Queue()
        self.proc = ctx.Process(target=probe_latency, args=(port, token, self.stop, self.out, pause), daemon=True)
        self.proc.start()

    def finish(self) -> tuple[list[tuple[float, float]], dict[int, int]]:
        self.stop.set()
        result: tuple[list[tuple[float, float]], dict[int, int]] = self.out.get(timeout=60)
        self.proc.join(10)
        return result


def start(cmd: list[str], folder: Path, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    with (folder / f"{name}.out").open("wb") as out, (folder / f"{name}.err").open("wb") as err:
        return subprocess.Popen(cmd, cwd=folder, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def tree_cpu(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="conveyor-web-sse-", dir=args.dir))
    (folder / "tasks.py").write_text(TASKS)
    url = f"sqlite:///{folder}/sse.db"
    token = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(CONVEYOR_URL=url, CONVEYOR_WEB_TOKEN=token, PYTHONPATH=str(folder), PYTHONUNBUFFERED="1")
    os.environ.update(CONVEYOR_URL=url)
    sys.path.insert(0, str(folder))
    import tasks  # the module written above

    app = tasks.app
    app.open()
    web = worker = None
    clients: list[SSEClient] = []
    try:
        web = start([*CONVEYOR, "web", "tasks:app", "--port", "0", "--threads", str(args.threads)], folder, env, "web")
        server = web

        def listening() -> re.Match[bytes] | None:
            if server.poll() is not None:
                raise RuntimeError(f"conveyor web exited: {(folder / 'web.err').read_text()}")
            return re.search(rb"http://127\.0\.0\.1:(\d+)/", (folder / "web.out").read_bytes())

        port = int(wait_until(listening, 20, "conveyor web to listen").group(1))
        worker = start([*CONVEYOR, "worker", "tasks:app", "--concurrency", str(args.concurrency)], folder, env,
                       "worker")
        wait_until(lambda: len(app.broker.workers()) >= args.concurrency, 30, "the worker's consumers")
        log(f"web pid {web.pid} on port {port}, worker pid {worker.pid}, folder {folder}")

        idle = Latency(port, token, args.pause)
        time.sleep(args.idle_s)
        idle_latencies, idle_bad = idle.finish()

        clients = [SSEClient(port, token, i) for i in range(args.clients)]
        for client in clients:
            client.start()
        for client in clients:
            client.connected.wait(30)
        broken = [c.error for c in clients if c.error]
        if broken:
            raise RuntimeError(f"{len(broken)} SSE clients failed to connect: {broken[0]}")
        log(f"{len(clients)} SSE clients connected")

        web_proc, worker_proc = psutil.Process(web.pid), psutil.Process(worker.pid)
        web_cpu0, worker_cpu0 = tree_cpu(web_proc), tree_cpu(worker_proc)
        web_rss = web_proc.memory_info().rss
        me = psutil.Process()
        my_cpu0 = sum(me.cpu_times()[:2])
        busy = Latency(port, token, args.pause)
        time.sleep(0.2)
        noop = app.tasks["bench.noop"]
        ids: list[bytes] = []
        started, started_wall = time.monotonic(), time.time()
        for first in range(0, args.jobs, args.batch):
            jobs = noop.enqueue_many([(i,) for i in range(first, min(first + args.batch, args.jobs))])
            ids += [j.id.encode() for j in jobs]
            if args.rate > 0:
                ahead = started + len(ids) / args.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        enqueued_s = time.monotonic() - started
        log(f"enqueued {len(ids)} jobs in {enqueued_s:.2f}s")
        wanted = set(ids)

        def all_done() -> bool:
            return app.broker.counts().get("default", {}).get("succeeded", 0) >= len(ids)

        wait_until(all_done, args.timeout, "every job to succeed", interval=0.1)
        drained_s = time.monotonic() - started
        log(f"all {len(ids)} jobs succeeded after {drained_s:.2f}s")

        def clients_caught_up() -> bool:
            return all(wanted <= c.succeeded or c.error for c in clients)

        try:
            wait_until(clients_caught_up, args.timeout, "every client to see every job succeed", interval=0.1)
        except TimeoutError as exc:
            log(str(exc))
        delivered_s = time.monotonic() - started
        latencies, busy_bad = busy.finish()
        web_cpu, worker_cpu = tree_cpu(web_proc) - web_cpu0, tree_cpu(worker_proc) - worker_cpu0
        clients_cpu = sum(me.cpu_times()[:2]) - my_cpu0
        web_rss = max(web_rss, web_proc.memory_info().rss)
        for client in clients:
            client.stop.set()
        complete = sum(1 for c in clients if wanted <= c.succeeded)
        busy_stats = percentiles([ms for _, ms in latencies])
        slowest = sorted(latencies, key=lambda sample: -sample[1])[:5]
        return {
            "bench": "web_sse",
            "config": {"jobs": args.jobs, "clients": args.clients, "rate_jobs_per_s": args.rate or "burst",
                       "worker_concurrency": args.concurrency, "server_threads": args.threads,
                       "broker": "sqlite", "cpus": os.cpu_count()},
            "jobs": {"enqueued_s": round(enqueued_s, 2), "all_succeeded_s": round(drained_s, 2),
                     "all_delivered_s": round(delivered_s, 2)},
            "sse": {"clients_complete": complete, "clients_failed": [c.error for c in clients if c.error],
                    "missing_per_client_max": max(len(wanted - c.succeeded) for c in clients),
                    "events_per_client_min": min(c.events for c in clients),
                    "events_per_client_max": max(c.events for c in clients),
                    "resets_total": sum(c.resets for c in clients),
                    "mbytes_per_client": round(sum(c.bytes for c in clients) / len(clients) / 2**20, 2)},
            "api_jobs_latency_ms": {
                "idle": {**percentiles([ms for _, ms in idle_latencies]), "errors": idle_bad},
                "under_load": {**busy_stats, "errors": busy_bad,
                               "slowest_at_s": [[round(at - started_wall, 2), round(ms, 1)] for at, ms in slowest]}},
            "server": {"cpu_s": round(web_cpu, 2), "rss_mb": round(web_rss / 2**20, 1)},
            "worker": {"cpu_s": round(worker_cpu, 2)},
            # The SSE readers and the producer share this machine's two cores with the server.
            "bench_clients": {"cpu_s": round(clients_cpu, 2)},
            "target": {"p99_ms_below": TARGET_P99_MS, "p99_ms": busy_stats.get("p99"),
                       "met": bool(busy_stats.get("n")) and busy_stats["p99"] < TARGET_P99_MS,
                       "every_client_saw_every_job": complete == len(clients)},
        }
    finally:
        for client in clients:
            client.stop.set()
        stop(worker)
        stop(web)
        app.close()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.web_sse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", type=float, default=1000.0, help="jobs/s enqueued (0: all at once)")
    parser.add_argument("--batch", type=int, default=100, help="jobs per enqueue_many call")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=128, help="server threads (conveyor web --threads)")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between two GET /api/jobs")
    parser.add_argument("--idle-s", type=float, default=2.0, help="seconds of idle latency probing first")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--dir", help="where the temporary folder goes (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the folder (database, logs)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if result["target"]["met"] and result["target"]["every_client_saw_every_job"] else 1


if __name__ == "__main__":
    sys.exit(main())
