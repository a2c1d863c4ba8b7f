"""Job messages in the wire format (docs/protocol.md) sent as plain STOMP text frames by bash over
``/dev/tcp`` (``publish.sh``, no library) are run by the Python worker and get job records in the
store; messages that do not fit are recorded as failed with the reason, and the worker goes on."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import uuid_utils
from transport_support import STOMP_URL, Project, wait_for

from conveyor.brokers.stomp import STOMPTransport

PUBLISHER = Path(__file__).with_name("publish.sh")


def publish(project: Project, queue: str, *bodies: bytes) -> None:
    files = []
    for i, body in enumerate(bodies):
        path = project.folder / f"body{i}.json"
        path.write_bytes(body)
        files.append(str(path))
    where = urlsplit(STOMP_URL)
    destination = STOMPTransport(project.url).destination(queue)
    done = subprocess.run(["bash", str(PUBLISHER), where.hostname or "127.0.0.1", str(where.port or 61613),
                           where.username or "guest", where.password or "guest", destination, *files],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == f"receipts {len(bodies)}"


def test_job_messages_from_bash_run_and_poison_is_recorded_failed(project: Project) -> None:
    worker = project.worker("-c", "1", "--lease", "5", env={"CONVEYOR_UNKNOWN_TASK_TIMEOUT": "0"})
    project.wait_consumers(worker, 1)
    named, later = str(uuid_utils.uuid7()), str(uuid_utils.uuid7())
    publish(project, "default",
            orjson.dumps({"task": "noop", "args": [41], "id": named}),
            b"{not json",
            orjson.dumps({"task": "no.such.task"}),
            orjson.dumps({"task": "noop", "args": ["x" * 1_100_000]}),
            orjson.dumps({"task": "noop", "args": [7], "id": later}))
    record = wait_for(lambda: (r := project.app.store.get(later)) is not None and r.state == "succeeded" and r, 30.0,
                      "the last good message to run (the worker went on)")
    assert orjson.loads(record.result or b"null") == 7
    first = project.record(named)
    assert (first.task, first.state, first.attempts) == ("noop", "succeeded", 1)

    def failures() -> dict[str, str]:
        return {j.error["type"]: j.error["message"] for j in project.app.store.search_jobs(state="failed").jobs
                if j.error is not None}

    failed = wait_for(lambda: len(f := failures()) == 3 and f, 30.0, "3 failed jobs")
    assert sorted(failed) == ["MalformedMessage", "PayloadTooLarge", "UnknownTask"]
    assert "not JSON" in failed["MalformedMessage"]
    assert all(failed.values())
    assert worker.alive()
