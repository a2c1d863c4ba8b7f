"""``zmq://`` with real ``conveyor worker`` processes: jobs pushed from this process run, their
events reach a plain SUB socket, the CLI, ``conveyor doctor`` and the HTTP API work, and the
streamer and forwarder devices carry jobs and events across processes."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import zmq
from werkzeug.test import Client
from zmq_support import Project, free_port

from conveyor.testing import wait_for
from conveyor.web import create_app


def subscriber(address: str, topic: bytes = b"job.") -> zmq.Socket[Any]:
    """A plain SUB socket (what a subscriber in any language would open)."""
    sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(address)
    time.sleep(0.3)  # ZeroMQ's slow joiner: the subscription reaches the publisher after the connect
    return sock


Seen = dict[str, tuple[bytes, dict[str, Any]]]


def events_until(sock: zmq.Socket[Any], ids: set[str], timeout: float = 60.0) -> Seen:
    """Events read from ``sock`` until each of ``ids`` has one (the last one per job is kept)."""
    seen: Seen = {}
    deadline = time.monotonic() + timeout
    while not ids <= set(seen):
        assert time.monotonic() < deadline, f"events of {len(ids - set(seen))} job(s) never came"
        if sock.poll(200):
            topic, body = sock.recv_multipart()
            event = orjson.loads(body)
            seen[event["id"]] = (topic, event)
    return seen


@pytest.mark.parametrize("store", ["sqlite", "redis", "postgres"], indirect=True)
def test_a_worker_runs_pushed_jobs_and_publishes_their_events(project: Project, ports: tuple[int, int]) -> None:
    project.worker("-c", "2")
    sub = subscriber(f"tcp://127.0.0.1:{ports[1]}")
    add = project.app.tasks["add"]
    jobs = [j for i in range(0, 300, 100) for j in add.enqueue_many([(k, 1) for k in range(i, i + 100)])]
    jobs += [add.enqueue(1000 + i, 1) for i in range(20)]
    try:
        assert [j.result(timeout=60) for j in jobs] == [k + 1 for k in range(300)] + [1001 + i for i in range(20)]
        events = events_until(sub, {j.id for j in jobs})
    finally:
        sub.close()
    for job in jobs:
        topic, event = events[job.id]
        assert topic == b"job.succeeded"
        assert event["state"] == "succeeded" and event["queue"] == "default"
        assert event["result"] == job.result(timeout=1)


def test_a_subscriber_can_follow_failures_only(project: Project, ports: tuple[int, int]) -> None:
    project.worker("-c", "1", consumers=1)
    sub = subscriber(f"tcp://127.0.0.1:{ports[1]}", topic=b"job.failed")
    try:
        job = project.app.tasks["fail"].enqueue("on purpose")
        ok = project.app.tasks["add"].enqueue(1, 2)
        assert ok.result(timeout=20) == 3
        ((topic, event),) = events_until(sub, {job.id}).values()
        assert topic == b"job.failed" and event["error"]["type"] == "RuntimeError"
        assert not sub.poll(300), "a subscriber of job.failed got another event"
    finally:
        sub.close()


def test_the_cli_the_doctor_and_the_http_api_work(project: Project) -> None:
    out = project.cli("doctor", "tasks:app")
    assert out.returncode == 1, out.stdout  # no worker yet: jobs would wait in the outbox
    assert "FAIL zmq:// workers reachable" in out.stdout and "ok   zmq:// worker can bind" in out.stdout
    project.worker("-c", "2")
    out = project.cli("doctor", "tasks:app")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok   zmq:// workers reachable" in out.stdout
    out = project.cli("enqueue", "tasks:app", "add", "[2, 3]", "--wait", "20")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("succeeded: 5")
    assert "succeeded" in project.cli("jobs", "tasks:app").stdout
    web = create_app(project.app, token="secret")
    try:
        api = Client(web)
        auth = {"Authorization": "Bearer secret"}
        made = api.post("/api/jobs", json={"task": "add", "args": [20, 22]}, headers=auth)
        assert made.status_code in (200, 201), made.get_data(as_text=True)
        job_id = made.get_json()["id"]
        job = wait_for(lambda: (r := api.get(f"/api/jobs/{job_id}", headers=auth).get_json())["state"] == "succeeded"
                       and r, 20.0, "the job posted to the API to succeed")
        assert job["state"] == "succeeded"
    finally:
        web.close()


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_devices_carry_jobs_to_workers_without_fixed_addresses(project: Project) -> None:
    """Producers push to a streamer device; two workers connect to it (``pull=``); both publish
    their events to a forwarder device (``events=>``), which a subscriber follows."""
    jobs_in, jobs_out, events_in, events_out = (free_port() for _ in range(4))
    project.spawn("zmq-device", "streamer", "--in", f"tcp://127.0.0.1:{jobs_in}", "--out", f"tcp://127.0.0.1:{jobs_out}")
    project.spawn("zmq-device", "forwarder", "--in", f"tcp://127.0.0.1:{events_in}",
                  "--out", f"tcp://127.0.0.1:{events_out}")
    worker_url = (f"zmq://127.0.0.1:{jobs_in}?pull=tcp://127.0.0.1:{jobs_out}"
                  f"&events=>tcp://127.0.0.1:{events_in}&resend_after=2")
    first = project.worker("-c", "1", url=worker_url, consumers=1)
    second = project.worker("-c", "1", url=worker_url, consumers=1)
    sub = subscriber(f"tcp://127.0.0.1:{events_out}", topic=b"job.succeeded")
    producer = Project(project.folder, f"zmq://127.0.0.1:{jobs_in}", project.store)
    try:
        work = producer.app.tasks["work"]
        jobs = [work.enqueue(i, 0.01) for i in range(60)]  # one push each: the device deals them out
        assert [j.result(timeout=30) for j in jobs] == list(range(60))
        events = events_until(sub, {j.id for j in jobs})
        assert {e["state"] for _, e in events.values()} == {"succeeded"}
        pids = {line[3] for line in project.ledger() if line[0] == "end"}
        assert len(pids) == 2, f"one worker ran every job: {pids}"
        assert first.alive() and second.alive()
    finally:
        producer.app.close()
        sub.close()
