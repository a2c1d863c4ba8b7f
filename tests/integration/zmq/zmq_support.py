"""Helpers of the ``zmq://`` integration tests: a project folder with a tasks module, real
``conveyor worker`` processes on free local ports, a store (SQLite file or a Redis key prefix of
its own, deleted at teardown), and a ledger the tasks keep outside the store, from which the
tests count lost, duplicated and overlapping runs.

(A name of its own, not ``conftest``: ``from conftest import`` would find whichever conftest.py
pytest imported first.)
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import socket
import subprocess
from pathlib import Path

import uuid_utils

from acceptance.harness import CONVEYOR, Worker
from conveyor import Conveyor
from conveyor.testing import require_service, wait_for
from fault_ledger import kill_workers, read_ledger
from fault_ledger import ledger_report as report_of

REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")

TASKS = '''\
import os
import time
from pathlib import Path

from conveyor import Conveyor, current_job

LEDGER = Path(__file__).resolve().parent / "ledger.log"
app = Conveyor()  # CONVEYOR_URL and CONVEYOR_STORE


def ledger(kind):
    """One line per start and end of a run, in one write(2) with O_APPEND (lines never interleave)."""
    job = current_job()
    line = f"{kind} {job.id} {job.attempt} {os.getpid()} {time.time()!r}\\n"
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task(name="work", retries=20, backoff=0.05)
def work(n: int, seconds: float = 0.0) -> int:
    ledger("start")
    time.sleep(seconds)
    ledger("end")
    return n


@app.task(name="add")
def add(a: int, b: int) -> int:
    return a + b


@app.task(name="fail", retries=0)
def fail(reason: str) -> None:
    raise RuntimeError(reason)
'''

_counter = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def store_url(kind: str, folder: Path) -> str:
    """A SQLite file in ``folder``, a Redis database 15 key prefix of its own, or a PostgreSQL
    schema of its own (migrated here, as ``conveyor migrate`` would)."""
    if kind == "sqlite":
        return f"sqlite:///{folder}/jobs.db"
    if kind == "postgres":
        require_service(POSTGRES_URL, "PostgreSQL")
        from conveyor.brokers.postgres import PostgresBroker

        separator = "&" if "?" in POSTGRES_URL else "?"
        url = f"{POSTGRES_URL}{separator}schema=zmq_it_{uuid_utils.uuid7().hex[-16:]}"
        store = PostgresBroker(url)
        try:
            store.migrate()
        finally:
            store.close()
        return url
    require_service(REDIS_URL, "Redis")
    separator = "&" if "?" in REDIS_URL else "?"
    return f"{REDIS_URL}{separator}prefix=zmq-it-{uuid_utils.uuid7().hex}"


class Project:
    """``tasks.py`` in ``folder``; its app on ``url`` + ``store`` in this process; workers started
    from there (each may have URL options of its own, e.g. ``bind=``)."""

    def __init__(self, folder: Path, url: str, store: str) -> None:
        self.folder, self.url, self.store = folder, url, store
        (folder / "tasks.py").write_text(TASKS)
        self.workers: list[Worker] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.app = self._load()

    def _load(self) -> Conveyor:
        spec = importlib.util.spec_from_file_location(f"zmq_it_tasks_{next(_counter)}", self.folder / "tasks.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        saved = {k: os.environ.pop(k) for k in [k for k in os.environ if k.startswith("CONVEYOR_")]}
        os.environ.update(CONVEYOR_URL=self.url, CONVEYOR_STORE=self.store)
        try:
            spec.loader.exec_module(module)
            app: Conveyor = module.app
            app.open()
        finally:
            for key in ("CONVEYOR_URL", "CONVEYOR_STORE"):
                os.environ.pop(key, None)
            os.environ.update(saved)
        return app

    def environ(self, url: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(CONVEYOR_URL=url or self.url, CONVEYOR_STORE=self.store, PYTHONUNBUFFERED="1",
                   PYTHONDONTWRITEBYTECODE="1")
        return env

    def worker(self, *flags: str, url: str | None = None, consumers: int = 2) -> Worker:
        """Start ``conveyor worker tasks:app --lease 2 FLAGS`` and wait for ``consumers`` heartbeats."""
        n = len(self.workers)
        out, err = self.folder / f"worker{n}.out", self.folder / f"worker{n}.err"
        with out.open("wb") as fout, err.open("wb") as ferr:
            proc = subprocess.Popen([*CONVEYOR, "worker", "tasks:app", "--lease", "2", *flags], cwd=self.folder,
                                    env=self.environ(url), stdout=fout, stderr=ferr, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        worker = Worker(proc, out, err)
        self.workers.append(worker)

        def up() -> bool:
            assert worker.alive(), f"worker exited with {proc.returncode}:\n{worker.stderr()}"
            mine = [w for w in self.app.store.workers() if w.supervisor and f":{proc.pid}:" in w.supervisor]
            return len(mine) >= consumers

        wait_for(up, 20.0, f"{consumers} consumer(s) of worker {proc.pid} to report", interval=0.05)
        return worker

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        """Start ``conveyor ARGS`` (a device) in its own session; killed at cleanup."""
        proc = subprocess.Popen([*CONVEYOR, *args], cwd=self.folder, env=self.environ(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CONVEYOR, *args], cwd=self.folder, env=self.environ(), capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)

    def succeeded(self) -> int:
        return sum(per.get("succeeded", 0) for per in self.app.store.counts().values())

    def ledger(self) -> list[list[str]]:
        return read_ledger(self.folder)

    def ledger_report(self, job_ids: list[str]) -> dict[str, list[str]]:
        """Lost, duplicated and overlapping jobs, from the ledger the task keeps outside the store."""
        return report_of(self.ledger(), job_ids)

    def cleanup(self) -> None:
        kill_workers(self.workers, lambda worker: worker.stderr(), "stderr")
        for proc in self.procs:
            proc.kill()
            proc.wait(10)
        self.app.close()
        if not self.store.startswith("sqlite"):  # a Redis prefix or a PostgreSQL schema of its own
            from conveyor.brokers.registry import broker_class

            store = broker_class(self.store)(self.store)
            try:
                store.drop()  # type: ignore[attr-defined]
            finally:
                store.close()
