"""Job messages in the wire format (docs/protocol.md) published by a client in another language —
plain AMQP 0-9-1 frames written by node (``publish.js``, no library) — are run by the Python
worker and get job records in the store; messages that do not fit the format are recorded as
failed with the reason, and the worker goes on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import orjson
import pytest
import uuid_utils
from transport_support import AMQP_URL, Project, wait_for

from conveyor.brokers.amqp import AMQPTransport

PUBLISHER = Path(__file__).with_name("publish.js")


def publish(project: Project, queue: str, *bodies: bytes) -> None:
    """Publish ``bodies`` to the RabbitMQ queue of Conveyor queue ``queue`` with node."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed for the non-Python client of this test")
    files = []
    for i, body in enumerate(bodies):
        path = project.folder / f"body{i}.json"
        path.write_bytes(body)
        files.append(str(path))
    name = AMQPTransport(project.url).name(queue)
    done = subprocess.run([node, str(PUBLISHER), AMQP_URL, name, *files], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == f"confirmed {len(bodies)}"


def test_job_messages_from_node_run_and_poison_is_recorded_failed(project: Project) -> None:
    worker = project.worker("-c", "1", "--lease", "5", env={"CONVEYOR_UNKNOWN_TASK_TIMEOUT": "0"})
    project.wait_consumers(worker, 1)  # its consumer declared the queue
    named, later = str(uuid_utils.uuid7()), str(uuid_utils.uuid7())
    publish(project, "default",
            orjson.dumps({"task": "noop", "args": [41], "id": named, "max_attempts": 2}),
            orjson.dumps({"task": "noop", "kwargs": {"n": 3}, "priority": 2}),
            b"this is not JSON",
            orjson.dumps({"task": "no.such.task", "args": []}),
            orjson.dumps({"task": "noop", "args": ["x" * 1_100_000]}),
            orjson.dumps({"task": "noop", "args": "not a list"}),
            orjson.dumps({"task": "noop", "args": [7], "id": later}))
    record = wait_for(lambda: (r := project.app.store.get(later)) is not None and r.state == "succeeded" and r, 30.0,
                      "the last good message to run (the worker went on)")
    assert orjson.loads(record.result or b"null") == 7
    first = project.record(named)
    assert (first.task, first.state, first.attempts, first.max_attempts) == ("noop", "succeeded", 1, 2)
    assert orjson.loads(first.result or b"null") == 41
    assert orjson.loads(first.payload) == {"args": [41], "kwargs": {}}

    def failures() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for job in project.app.store.search_jobs(state="failed", limit=50).jobs:
            assert job.error is not None and job.error["message"]
            found.setdefault(job.error["type"], []).append(job.error["message"])
        return found

    failed = wait_for(lambda: (f := failures()) and sum(map(len, f.values())) == 4 and f, 30.0, "4 failed jobs")
    assert sorted(failed) == ["MalformedMessage", "PayloadTooLarge", "UnknownTask"]
    assert len(failed["MalformedMessage"]) == 2
    assert any("not JSON" in m for m in failed["MalformedMessage"])
    assert any("args" in m for m in failed["MalformedMessage"])
    assert "over the limit" in failed["PayloadTooLarge"][0]
    succeeded = project.app.store.search_jobs(state="succeeded", task="noop", limit=50).jobs
    assert sorted(orjson.loads(j.result or b"null") for j in succeeded) == [3, 7, 41]
    assert worker.alive()
    transport = AMQPTransport(project.url)
    try:  # each message was settled once its job was in the store, and none was sent again
        wait_for(lambda: transport.depth("default") == 0, 10.0, "the queue to be empty")
    finally:
        transport.close()
    assert all(j.attempts == 1 for j in succeeded)


def test_a_job_message_for_another_queue_is_carried_there(project: Project) -> None:
    worker = project.worker("-c", "1", "--lease", "5", "--queues", "default,other")
    project.wait_consumers(worker, 1)
    job_id = str(uuid_utils.uuid7())
    publish(project, "default", orjson.dumps({"task": "noop", "args": [5], "id": job_id, "queue": "other"}))
    record = wait_for(lambda: (r := project.app.store.get(job_id)) is not None and r.state == "succeeded" and r,
                      30.0, "the job to run on its queue")
    assert record.queue == "other"
