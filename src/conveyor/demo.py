"""``conveyor demo``: a worker on a fresh SQLite file, a mix of sample jobs, shown live."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

APP = "conveyor.demo_tasks:app"
STATE_STYLE = {"queued": "white", "scheduled": "cyan", "running": "yellow", "succeeded": "green",
               "failed": "red", "cancelled": "magenta"}


def _enqueue_samples(n: int) -> list[Any]:
    from . import demo_tasks as t

    jobs: list[Any] = []
    kinds: list[Callable[[int], Any]] = [
        lambda i: t.transcode.enqueue(f"holiday-{i}.mov", seconds=2.0 + (i % 3)),
        lambda i: t.send_email.enqueue(f"user{i}@example.com"),
        lambda i: t.import_batch.enqueue(i),
        lambda i: t.publish.options(delay=2 + i % 4).enqueue(i),
        lambda i: t.send_email.enqueue(f"team{i}@example.com", subject="Weekly report"),
        lambda i: t.replicate.enqueue(["eu-west", "us-east", "ap-south"][i % 3]),
    ]
    for i in range(n):
        jobs.append(kinds[i % len(kinds)](i))
    return jobs


def _table(records: list[Any]) -> Any:
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    table = Table(title="conveyor demo: jobs", expand=False)
    for col in ("task", "queue", "state", "try", "progress", "note"):
        table.add_column(col)
    for r in records:
        fraction = r.progress if r.progress is not None else (1.0 if r.state == "succeeded" else 0.0)
        note = ""
        if r.error and r.state in ("failed", "scheduled"):
            note = f"{r.error.get('type')}: {r.error.get('message', '')}"[:48]
        elif r.progress_message and r.state == "running":
            note = r.progress_message
        elif r.state == "scheduled":
            note = f"runs in {max(0.0, (r.run_at or 0) - time.time()):.1f}s"
        table.add_row(r.task.rsplit(".", 1)[-1], r.queue, f"[{STATE_STYLE[r.state]}]{r.state}[/]",
                      f"{r.attempts}/{r.max_attempts}", ProgressBar(total=1.0, completed=fraction, width=20), note)
    return table


def _start_dashboard(app: Any, port: int) -> tuple[Any, str, Any]:
    from .web.command import serve_in_thread

    try:
        return serve_in_thread(app, "127.0.0.1", port)
    except OSError:  # the port is taken: any free one will do
        return serve_in_thread(app, "127.0.0.1", 0)


def run_demo(db: str, n_jobs: int = 24, keep: bool = False, port: int = 8000,
             serve: bool | None = None) -> int:
    """Run the demo; returns the exit code (0 when every job ended as expected).

    The dashboard runs on 127.0.0.1 for the demo's length; with ``serve`` (default: when stdin is a
    terminal) it stays up after the jobs end, until Ctrl-C.
    """
    from rich.console import Console

    console = Console()
    path = os.path.abspath(db)
    if not keep:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    url = f"sqlite:///{path}"
    os.environ["CONVEYOR_URL"] = url
    from . import demo_tasks

    demo_tasks.app.open()
    log_path = os.path.splitext(path)[0] + ".log"
    console.print(f"[bold]Conveyor demo[/] — database {path}, worker log {log_path}")
    server, login_url, web_app = _start_dashboard(demo_tasks.app, port)
    console.print(f"[bold]Dashboard:[/] {login_url}", soft_wrap=True)
    with open(log_path, "w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "worker", APP, "--concurrency", "2", "--grace", "10"],
            env={**os.environ, "CONVEYOR_URL": url}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        jobs = _enqueue_samples(n_jobs)
        console.print(f"enqueued {len(jobs)} jobs; worker pid {worker.pid} (2 processes)")
        ids = [j.id for j in jobs]
        broker = demo_tasks.app.broker
        deadline = time.monotonic() + 120
        records = [r for r in broker.get_many(ids) if r is not None]

        def done() -> bool:
            return all(r.state in ("succeeded", "failed", "cancelled") for r in records)

        if console.is_terminal:
            from rich.live import Live

            with Live(_table(records), console=console, refresh_per_second=8) as live:
                while not done() and time.monotonic() < deadline and worker.poll() is None:
                    time.sleep(0.15)
                    records = [r for r in broker.get_many(ids) if r is not None]
                    live.update(_table(records))
        else:
            last = 0.0
            while not done() and time.monotonic() < deadline and worker.poll() is None:
                time.sleep(0.15)
                records = [r for r in broker.get_many(ids) if r is not None]
                if time.monotonic() - last > 1.0:
                    last = time.monotonic()
                    states: dict[str, int] = {}
                    for r in records:
                        states[r.state] = states.get(r.state, 0) + 1
                    console.print(" ".join(f"{k}={v}" for k, v in sorted(states.items())))
            console.print(_table(records))
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
    counts: dict[str, int] = {}
    for r in records:
        counts[r.state] = counts.get(r.state, 0) + 1
    console.print("[bold]finished:[/] " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    console.print(f"worker exited with code {worker.returncode}")
    exe = os.path.join(os.path.dirname(sys.executable), "conveyor")
    exe = os.path.relpath(exe) if exe.startswith(os.getcwd() + os.sep) else exe
    env = f"CONVEYOR_URL={url}"
    console.print("Look around:", soft_wrap=True)
    for line in (f"jobs {APP} --state failed", f"queues {APP}", f"job {APP} <id>"):
        console.print(f"  {env} {exe} {line}", soft_wrap=True, markup=False, highlight=False)
    expected_failed = sum(1 for r in records if r.task.endswith("replicate"))
    ok = (done() and counts.get("failed", 0) == expected_failed and worker.returncode == 0)
    if not ok:
        console.print(f"[red]the demo did not end as expected[/] (see {log_path})")
    if serve is None:
        serve = sys.stdin.isatty() and console.is_terminal
    try:
        if serve:
            console.print(f"The dashboard stays up at {login_url} — press Ctrl-C to stop.", soft_wrap=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        web_app.close()
    return 0 if ok else 1
