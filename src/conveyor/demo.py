"""``conveyor demo``: a worker on a fresh SQLite file, a mix of sample jobs, shown live."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .presentation import display_state, shown_progress

APP = "conveyor.demo_tasks:app"
STATE_STYLE = {"queued": "white", "scheduled": "cyan", "reserved": "bright_black", "running": "yellow",
               "succeeded": "green", "failed": "red", "cancelled": "magenta"}
#: Lines of a terminal the live view leaves to what is printed above and below the table.
CHROME = 9


class DemoRunning(Exception):
    """Another demo holds the database (its path and the other demo's pid are in the message)."""


@contextmanager
def _only_demo(path: str) -> Iterator[None]:
    """Hold ``PATH.lock`` for the demo's life, so that a second demo on the same file is refused
    before it deletes anything (the lock goes with the process, however it ends)."""
    with open(path + ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            lock.seek(0)
            pid = lock.read().strip() or "?"
            raise DemoRunning(f"another conveyor demo (pid {pid}) is running on {path}: wait for it to end, "
                              "or give this one its own file with --db other.db") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def _count(records: list[Any]) -> dict[str, int]:
    """Jobs per shown state (``reserved`` apart from ``running``; a failed attempt waiting for its
    retry counts as ``failed``)."""
    counts: dict[str, int] = {}
    for r in records:
        state = display_state(r).split(",")[0]
        counts[state] = counts.get(state, 0) + 1
    return counts


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


def _activity(r: Any) -> tuple[int, float]:
    """Newest first: jobs executing now, then by their latest change (finish, start, creation)."""
    when = r.finished_at or r.started_at or r.created_at or 0.0
    return (0 if r.state == "running" else 1, -when)


def _table(records: list[Any], width: int = 80, height: int | None = None) -> Any:
    """The jobs as a table no wider than ``width``; with ``height`` (a live view), no taller: the
    newest rows, and a count by state of those left out."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    shown, rest = records, []
    if height is not None and len(records) > max(1, height - CHROME):
        ordered = sorted(records, key=_activity)
        keep = max(1, height - CHROME)
        shown, rest = ordered[:keep], ordered[keep:]
    table = Table(title="conveyor demo: jobs", expand=False)
    for col in ("task", "queue", "state", "try", "progress"):
        table.add_column(col, no_wrap=True)
    table.add_column("note")  # the one column narrowed to fit (its cells are cut, never wrapped)
    bar = 20 if width >= 100 else 10
    for r in shown:
        fraction, message = shown_progress(r)
        note = ""
        if r.error and r.state in ("failed", "scheduled"):
            note = f"{r.error.get('type')}: {r.error.get('message', '')}"[:48]
        elif message and r.state == "running":
            note = message
        elif r.state == "scheduled":
            note = f"runs in {max(0.0, (r.run_at or 0) - time.time()):.1f}s"
        state = display_state(r)
        style = STATE_STYLE.get(state, STATE_STYLE[r.state])
        table.add_row(r.task.rsplit(".", 1)[-1], r.queue, f"[{style}]{state}[/]", f"{r.attempts}/{r.max_attempts}",
                      ProgressBar(total=1.0, completed=fraction or 0.0, width=bar),
                      Text(note, no_wrap=True, overflow="ellipsis"))
    if not rest:
        return table
    from rich.console import Group

    more = f"and {len(rest)} more: " + ", ".join(f"{n} {k}" for k, n in sorted(_count(rest).items()))
    return Group(table, Text(more, no_wrap=True, overflow="ellipsis"))


def _start_dashboard(app: Any, port: int, console: Any) -> tuple[Any, str, Any]:
    from .web.auth import generate_token
    from .web.command import serve_in_thread

    # A token of our own (or the configured one): the web app then has none to announce, and the
    # login URL is printed once, below.
    token = os.environ.get("CONVEYOR_WEB_TOKEN") or generate_token()
    try:
        return serve_in_thread(app, "127.0.0.1", port, token=token)
    except OSError:  # the port is taken: any free one will do
        started = serve_in_thread(app, "127.0.0.1", 0, token=token)
        console.print(f"port {port} is taken: the dashboard uses port {started[0].port} instead", highlight=False)
        return started


def run_demo(db: str, n_jobs: int = 24, keep: bool = False, port: int = 8000,
             serve: bool | None = None) -> int:
    """Run the demo; returns the exit code (0 when every job ended as expected, 2 when another demo
    runs on the same database).

    The dashboard runs on 127.0.0.1 for the demo's length; with ``serve`` (default: when stdin and
    stdout are a terminal) it stays up after the jobs end, until Ctrl-C.
    """
    from rich.console import Console

    console = Console()
    path = os.path.abspath(db)
    try:
        with _only_demo(path):
            return _run(console, path, n_jobs, keep, port, serve)
    except DemoRunning as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2


def _run(console: Any, path: str, n_jobs: int, keep: bool, port: int, serve: bool | None) -> int:
    if not keep:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    url = f"sqlite:///{path}"
    os.environ["CONVEYOR_URL"] = url
    from . import demo_tasks

    demo_tasks.app.open()
    log_path = os.path.splitext(path)[0] + ".log"
    why = "--no-serve" if serve is False else "not run in a terminal"
    if serve is None:
        serve = sys.stdin.isatty() and console.is_terminal
    console.print(f"[bold]Conveyor demo[/] — database {path}, worker log {log_path}", soft_wrap=True)
    server, login_url, web_app = _start_dashboard(demo_tasks.app, port, console)
    console.print(f"[bold]Dashboard:[/] {login_url}", soft_wrap=True)
    if not serve:
        console.print(f"The dashboard stops when the demo ends ({why}); to keep it up until Ctrl-C, run: "
                      "conveyor demo --serve", soft_wrap=True, highlight=False)
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

            def view() -> Any:
                return _table(records, console.width, console.height)

            with Live(view(), console=console, refresh_per_second=8, vertical_overflow="crop") as live:
                while not done() and time.monotonic() < deadline and worker.poll() is None:
                    time.sleep(0.15)
                    records = [r for r in broker.get_many(ids) if r is not None]
                    live.update(view())
        else:
            last = 0.0
            while not done() and time.monotonic() < deadline and worker.poll() is None:
                time.sleep(0.15)
                records = [r for r in broker.get_many(ids) if r is not None]
                if time.monotonic() - last > 1.0:
                    last = time.monotonic()
                    console.print(" ".join(f"{k}={v}" for k, v in sorted(_count(records).items())))
            console.print(_table(records, console.width))
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
    console.print("Look around:", soft_wrap=True)
    for line in (f"jobs {APP} --state failed", f"queues {APP}", f"job {APP} <id>"):
        console.print(f"  {exe} --url {url} {line}", soft_wrap=True, markup=False, highlight=False)
    expected_failed = sum(1 for r in records if r.task.endswith("replicate"))
    ok = (done() and counts.get("failed", 0) == expected_failed and worker.returncode == 0)
    if not ok:
        console.print(f"[red]the demo did not end as expected[/] (see {log_path})")
    try:
        if serve:
            console.print(f"The dashboard stays up at {login_url} — press Ctrl-C to stop.", soft_wrap=True)
            while True:
                time.sleep(3600)
        else:
            console.print("The dashboard has stopped; `conveyor demo --serve` keeps it up after the jobs end.",
                          soft_wrap=True, highlight=False)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        web_app.close()
    return 0 if ok else 1
