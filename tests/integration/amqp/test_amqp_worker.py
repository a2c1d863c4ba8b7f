"""The real ``conveyor worker`` over ``amqp://`` with a SQLite and a Redis store: it runs jobs, the
CLI reads them from the store, ``conveyor doctor`` checks RabbitMQ, quorum queues work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from transport_support import CONVEYOR, Project, project_of

from conveyor.brokers.amqp import AMQPTransport


def test_a_worker_runs_jobs_carried_by_rabbitmq(project: Project) -> None:
    worker = project.worker("-c", "2", "--lease", "5")
    project.wait_consumers(worker, 2)
    jobs = project.app.tasks["noop"].enqueue_many([(i,) for i in range(300)])
    assert [j.result(timeout=60) for j in jobs] == list(range(300))
    assert project.app.store.counts()["default"] == {"succeeded": 300}
    listing = project.cli("jobs", "tasks:app", "--state", "succeeded")
    assert listing.returncode == 0, listing.stderr
    assert "noop" in listing.stdout
    assert worker.alive()
    depth = AMQPTransport(project.url)
    try:
        assert depth.depth("default") == 0  # every delivery was acknowledged
    finally:
        depth.close()


def test_doctor_checks_rabbitmq_and_the_store(project: Project) -> None:
    done = project.cli("doctor", "tasks:app")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok   RabbitMQ reachable" in done.stdout
    assert "publisher confirms" in done.stdout


def test_doctor_says_what_is_wrong_when_rabbitmq_is_not_there(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text("from conveyor import Conveyor\napp = Conveyor()\n")
    env = {"CONVEYOR_URL": "amqp://guest:guest@127.0.0.1:1/", "CONVEYOR_STORE": f"sqlite:///{tmp_path}/j.db",
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([*CONVEYOR, "doctor", "tasks:app"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "FAIL RabbitMQ reachable" in done.stdout
    assert "start RabbitMQ" in done.stdout


def test_quorum_queues(tmp_path: Path) -> None:
    for project in project_of(tmp_path, "amqp", "sqlite", "&queue_type=quorum"):
        worker = project.worker("-c", "1", "--lease", "5")
        project.wait_consumers(worker, 1)
        jobs = project.app.tasks["noop"].enqueue_many([(i,) for i in range(50)])
        assert [j.result(timeout=60) for j in jobs] == list(range(50))
        listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "type"], capture_output=True,
                                text=True, timeout=60).stdout
        name = project.url.split("prefix=")[1].split("&")[0] + "default"
        assert [name, "quorum"] in [line.split() for line in listed.splitlines()], listed
        doctor = project.cli("doctor", "tasks:app")
        assert "ok   quorum queues supported" in doctor.stdout, doctor.stdout


def test_the_example_runs() -> None:
    from transport_support import AMQP_URL

    from conveyor.testing import require_service

    require_service(AMQP_URL, "RabbitMQ")
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, str(root / "examples" / "amqp_shop.py")], capture_output=True, text=True,
                          timeout=120, cwd=root, env={**os.environ, "AMQP_URL": AMQP_URL})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "from another language: order 1003 shipped by post" in done.stdout
    assert "dead letter" in done.stdout and "MalformedMessage" in done.stdout
