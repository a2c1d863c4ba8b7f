"""Real workers over the ``amqp://`` and ``stomp://`` transports of the shared RabbitMQ, paired with a
SQLite or Redis store (shared by ``tests/integration/amqp`` and ``tests/integration/stomp``).

Every project gets a queue prefix of its own (its RabbitMQ queues are deleted at teardown) and a
store of its own (a SQLite file in the test's folder, or a Redis key prefix on database 15,
dropped at teardown). Workers are the real ``conveyor worker`` command in their own process group
(``Worker`` of ``redis_support``), SIGKILLed at teardown. The tasks write a ledger outside the
store, from which a test counts lost and overlapping runs (``ledger_report``).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import uuid_utils

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "redis"))

from redis_support import CONVEYOR, REDIS_URL, TASKS, Worker

from conveyor import Conveyor
from conveyor.brokers import JobRecord
from conveyor.testing import require_service, wait_for
from fault_ledger import kill_workers, read_ledger
from fault_ledger import ledger_report as report_of

AMQP_URL = os.environ.get("CONVEYOR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
STOMP_URL = os.environ.get("CONVEYOR_TEST_STOMP_URL", "stomp://guest:guest@127.0.0.1:61613/")
_counter = itertools.count()

__all__ = [
    "AMQP_URL",
    "CONVEYOR",
    "STOMP_URL",
    "Project",
    "Worker",
    "delete_queues",
    "kill_storm",
    "ledger_report",
    "make_project",
    "project_of",
    "server_closes_every_connection",
    "wait_for",
]


def delete_queues(names: list[str]) -> None:
    """Delete RabbitMQ queues by name (over AMQP)."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        for name in names:
            channel.queue_delete(name)
    finally:
        connection.close()


class Project:
    """``tasks.py`` in a folder; an app on ``url`` paired with ``store`` in this process; workers."""

    def __init__(self, folder: Path, url: str, store: str) -> None:
        self.folder, self.url, self.store_url = folder, url, store
        (folder / "tasks.py").write_text(TASKS)
        self.workers: list[Worker] = []
        saved = {k: os.environ.pop(k) for k in [k for k in os.environ if k.startswith("CONVEYOR_")]}
        os.environ.update(CONVEYOR_URL=url, CONVEYOR_STORE=store)
        try:
            spec = importlib.util.spec_from_file_location(f"transport_it_{next(_counter)}", folder / "tasks.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self.app: Conveyor = module.app
            self.app.open()
        finally:
            os.environ.pop("CONVEYOR_URL", None)
            os.environ.pop("CONVEYOR_STORE", None)
            os.environ.update(saved)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(CONVEYOR_URL=self.url, CONVEYOR_STORE=self.store_url, PYTHONUNBUFFERED="1",
                   PYTHONDONTWRITEBYTECODE="1", **extra)
        return env

    def worker(self, *flags: str, env: dict[str, str] | None = None) -> Worker:
        log = self.folder / f"worker{len(self.workers)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([*CONVEYOR, "worker", "tasks:app", *flags], cwd=self.folder,
                                    env=self.env(**(env or {})), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        worker = Worker(proc, log)
        self.workers.append(worker)
        return worker

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``conveyor ARGS`` in the project folder (``tasks:app`` where APP goes)."""
        return subprocess.run([*CONVEYOR, *args], cwd=self.folder, env=self.env(), capture_output=True, text=True,
                              timeout=60)

    def wait_consumers(self, worker: Worker, n: int, timeout: float = 30.0) -> None:
        def up() -> bool:
            assert worker.alive(), f"worker exited with {worker.proc.returncode}:\n{worker.log()}"
            mine = [w for w in self.app.store.workers() if w.supervisor and f":{worker.pid}:" in w.supervisor]
            return len(mine) >= n

        wait_for(up, timeout, f"{n} consumer(s) of worker {worker.pid} to report")

    def record(self, job_id: str) -> JobRecord:
        record = self.app.store.get(job_id)
        assert record is not None, f"job {job_id} is gone"
        return record

    def succeeded(self, n: int, queue: str = "default") -> bool:
        return self.app.store.counts().get(queue, {}).get("succeeded", 0) >= n

    def ledger(self) -> list[list[str]]:
        return read_ledger(self.folder)

    def cleanup(self) -> None:
        kill_workers(self.workers, lambda worker: worker.log(), "log")
        self.app.close()


def make_project(folder: Path, transport: str, store: str, options: str = "") -> tuple[Project, str]:
    """A project on ``transport`` (``amqp`` or ``stomp``, with more URL ``options``) and ``store``
    (``sqlite`` or ``redis``), and its queue prefix (the caller deletes ``<prefix>default`` and
    drops the store)."""
    base = AMQP_URL if transport == "amqp" else STOMP_URL
    require_service(base, "RabbitMQ" if transport == "amqp" else "RabbitMQ's STOMP plugin")
    prefix = f"it-{uuid_utils.uuid7().hex}."
    url = f"{base}{'&' if '?' in base else '?'}prefix={prefix}{options}"
    if store == "sqlite":
        store_url = f"sqlite:///{folder}/jobs.db"
    else:
        require_service(REDIS_URL, "Redis")
        store_url = f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix={prefix.rstrip('.')}"
    return Project(folder, url, store_url), prefix


def project_of(folder: Path, transport: str, store: str, options: str = "") -> Iterator[Project]:
    """A project (see :func:`make_project`), cleaned up afterwards: workers killed, its queues
    deleted, its Redis keys dropped."""
    from conveyor.brokers.redis import RedisBroker

    made, prefix = make_project(folder, transport, store, options)
    try:
        yield made
    finally:
        made.cleanup()
        delete_queues([prefix + q for q in ("default", "other")])
        if store == "redis":
            RedisBroker(made.store_url).drop()


# -- the fault scenarios, run over each transport -------------------------------------------------
def kill_storm(project: Project, jobs: int = 5000) -> None:
    """Pool processes SIGKILLed every second while ``jobs`` jobs drain: none is lost, none runs
    twice at once (what a killed process held comes back when its lease expires, fenced)."""
    worker = project.worker("-c", "3", "--lease", "2", "--prefetch", "16")
    project.wait_consumers(worker, 3)
    job_ids = [j.id for j in project.app.tasks["work"].enqueue_many([(i, 0.002) for i in range(jobs)])]
    rng = random.Random(13)
    kills = 0
    deadline = time.monotonic() + 120
    while not project.succeeded(jobs) and time.monotonic() < deadline:
        time.sleep(1.0)
        children = worker.children()
        if children and not project.succeeded(jobs):
            rng.choice(children).kill()
            kills += 1
    assert kills >= 3, f"only {kills} SIGKILL(s): the jobs drained before the storm"
    wait_for(lambda: project.succeeded(jobs), 120.0, f"all {jobs} jobs to succeed")
    report = ledger_report(project, job_ids)
    print(f"{kills} SIGKILLs: {len(report['duplicated'])} job(s) ran twice (at least once is the promise)")
    assert report["lost"] == []
    assert report["overlapping"] == []
    assert {r.state for r in project.app.store.get_many(job_ids) if r} == {"succeeded"}
    assert worker.alive()


def server_closes_every_connection(project: Project, lost: str, back: str) -> None:
    """``rabbitmqctl close_all_connections`` mid-run: the workers and the producer reconnect, and
    nothing is lost (what RabbitMQ requeued is fenced by the store)."""
    worker = project.worker("-c", "2", "--lease", "3")
    project.wait_consumers(worker, 2)
    job_ids = [j.id for j in project.app.tasks["work"].enqueue_many([(i, 0.003) for i in range(1500)])]
    wait_for(lambda: project.app.store.counts().get("default", {}).get("succeeded", 0) >= 200, 60.0,
             "200 jobs to succeed")
    closed = subprocess.run(["rabbitmqctl", "close_all_connections", "conveyor fault test"], capture_output=True,
                            text=True, timeout=60)
    assert closed.returncode == 0, closed.stderr
    job_ids += [project.app.enqueue("work", args=[i, 0.003]).id for i in range(100)]  # the producer reconnects
    wait_for(lambda: project.succeeded(len(job_ids)), 90.0, "every job to succeed")
    report = ledger_report(project, job_ids)
    assert report["lost"] == []
    assert report["overlapping"] == []
    assert worker.alive()
    wait_for(lambda: lost in worker.log() and back in worker.log(), 10.0, "the worker to log the loss and return")


def ledger_report(project: Project, job_ids: list[str]) -> dict[str, list[str]]:
    """Lost, duplicated and overlapping jobs, from the ledger the task keeps outside the store."""
    return report_of(project.ledger(), job_ids)
