"""The real ``conveyor worker`` over ``stomp://`` (RabbitMQ's STOMP plugin) with a SQLite and a Redis
store: it runs jobs, retries, and ``conveyor doctor`` checks the plugin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from transport_support import CONVEYOR, Project


def test_a_worker_runs_jobs_carried_over_stomp(project: Project) -> None:
    worker = project.worker("-c", "2", "--lease", "5")
    project.wait_consumers(worker, 2)
    jobs = project.app.tasks["noop"].enqueue_many([(i,) for i in range(300)])
    assert [j.result(timeout=60) for j in jobs] == list(range(300))
    assert project.app.store.counts()["default"] == {"succeeded": 300}
    later = project.app.tasks["noop"].options(delay=0.5).enqueue(9)  # waits in the store's schedule
    assert later.result(timeout=30) == 9
    listing = project.cli("queues", "tasks:app")
    assert listing.returncode == 0, listing.stderr
    assert "default" in listing.stdout
    assert worker.alive()


def test_doctor_checks_the_stomp_plugin(project: Project) -> None:
    done = project.cli("doctor", "tasks:app")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok   STOMP server reachable" in done.stdout


def test_doctor_says_to_turn_the_plugin_on_when_nothing_answers(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text("from conveyor import Conveyor\napp = Conveyor()\n")
    env = {"CONVEYOR_URL": "stomp://guest:guest@127.0.0.1:1/", "CONVEYOR_STORE": f"sqlite:///{tmp_path}/j.db",
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([*CONVEYOR, "doctor", "tasks:app"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "FAIL STOMP server reachable" in done.stdout


def test_the_example_runs() -> None:
    from transport_support import STOMP_URL

    from conveyor.testing import require_service

    require_service(STOMP_URL, "RabbitMQ's STOMP plugin")
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, str(root / "examples" / "stomp_orders.py")], capture_output=True,
                          text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "from plain STOMP frames: invoice for order 7002: 42.00 EUR (attempts: 1)" in done.stdout
