"""Acceptance: two applications on one queue (issue #10, section 6). A worker that receives a job
for a task it does not have hands it back, uncounted and with back-off, for a worker that has it;
the job fails only when no such worker claims it in time, naming the workers that refused it."""

from __future__ import annotations

import pytest

from conveyor import Conveyor
from harness import Project

pytestmark = pytest.mark.slow

OTHER_APP = '''\
from conveyor import Conveyor

app = Conveyor()  # URL from CONVEYOR_URL: the same store and queue as tasks.py


@app.task(name="publish")
def publish(page: str) -> str:
    return "published " + page
'''


def _enqueue_publish(project: Project) -> str:
    """Enqueue ``publish`` as the other application's web process would (its worker module is
    other.py in the project folder)."""
    (project.folder / "other.py").write_text(OTHER_APP)
    web = Conveyor(project.url)

    @web.task(name="publish")
    def publish(page: str) -> str:
        raise AssertionError("runs in a worker only")

    try:
        return publish.enqueue("home").id
    finally:
        web.close()


def test_a_job_for_another_apps_task_waits_for_a_worker_that_has_it(project: Project) -> None:
    first = project.worker("-c", "1")
    job_id = _enqueue_publish(project)
    refused = project.wait_state(job_id, "scheduled")
    assert refused.attempts == 0  # handed back uncounted
    assert refused.error is not None and refused.error["type"] == "UnknownTask"
    first.wait_log("handing it back for a worker that has it")

    second = project.worker("-c", "1", app="other:app")
    second.wait_log("shared with worker")  # warned once at start: the task sets differ
    done = project.wait_state(job_id, "succeeded", timeout=20)
    assert done.attempts == 1
    assert project.app.get_job(job_id).result(timeout=1) == "published home"
    assert first.alive() and second.alive()


def test_a_job_no_worker_can_run_fails_in_time_naming_who_refused_it(project: Project) -> None:
    worker = project.worker("-c", "2", env={"CONVEYOR_UNKNOWN_TASK_TIMEOUT": "1.5"})
    job_id = _enqueue_publish(project)
    failed = project.wait_state(job_id, "failed", timeout=15)
    assert failed.error is not None and failed.error["type"] == "UnknownTask"
    assert "'publish'" in failed.error["message"] and "1.5s" in failed.error["message"]
    refusers = failed.error["refused_by"]
    assert refusers and all(r in failed.error["message"] for r in refusers)
    assert all(worker.pid and f":{worker.pid}:" in r for r in refusers)
    assert worker.alive()
    assert project.app.get_task("add").enqueue(1, 2).result(timeout=10) == 3  # and it goes on
