"""Faults of the Redis broker with real worker processes: SIGKILL under load, a frozen worker's late
ack, a Redis restart mid-run, malformed values written into a queue by hand."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import orjson
import redis
from redis_support import REDIS_URL, Project, RedisServer, wait_for

from conveyor.errors import ConveyorError
from fault_ledger import ledger_report as report_of


def ledger_report(project: Project, job_ids: list[str]) -> dict[str, list[str]]:
    """Lost, duplicated and overlapping jobs, from the ledger the task keeps outside Redis."""
    return report_of(project.ledger(), job_ids)


def succeeded(project: Project, n: int) -> bool:
    return project.app.broker.counts().get("default", {}).get("succeeded", 0) >= n


def test_sigkill_of_pool_processes_under_load_loses_no_job(project: Project) -> None:
    worker = project.worker("-c", "3", "--lease", "2", "--prefetch", "4")
    project.wait_consumers(worker, 3)
    job_ids = [j.id for j in project.app.tasks["work"].enqueue_many([(i, 0.03) for i in range(240)])]
    rng = random.Random(7)
    kills = 0
    while kills < 6 and not succeeded(project, len(job_ids)):
        time.sleep(0.35)
        children = worker.children()
        if children:
            rng.choice(children).kill()
            kills += 1
    assert kills >= 3, "the jobs finished before the pool processes could be killed"
    wait_for(lambda: succeeded(project, len(job_ids)), 90.0, "every job to succeed")
    report = ledger_report(project, job_ids)
    print(f"{kills} SIGKILLs: {len(report['duplicated'])} job(s) ran twice (at least once is the promise)")
    assert report["lost"] == []
    assert report["overlapping"] == []
    assert {r.state for r in project.app.broker.get_many(job_ids) if r} == {"succeeded"}
    assert worker.alive()


def test_a_frozen_worker_s_late_ack_is_refused_and_the_newer_run_stands(project: Project) -> None:
    worker = project.worker("-c", "2", "--lease", "1.5", "--prefetch", "1")
    project.wait_consumers(worker, 2)
    job_id = project.enqueue("work", 0, 2.5)
    started = wait_for(lambda: [r for r in project.ledger() if r[:2] == ["start", job_id]], 15.0, "the job to start")
    frozen = int(started[0][3])
    os.kill(frozen, signal.SIGSTOP)
    try:
        # No heartbeat from the frozen process: its lease runs out, the supervisor's recover() puts
        # the job back and the other pool process runs it to the end.
        record = wait_for(lambda: (r := project.record(job_id)).state == "succeeded" and r, 30.0,
                          "the second run to succeed")
        assert orjson.loads(record.result or b"null") != frozen
        assert (record.attempts, [h["state"] for h in record.history]) == (2, ["lost"])
        newer = (record.result, record.token, record.finished_at)
    finally:
        os.kill(frozen, signal.SIGCONT)
    wait_for(lambda: [r for r in project.ledger() if r[0] == "end" and r[3] == str(frozen)], 15.0,
             "the frozen run to finish")
    wait_for(lambda: "ack refused" in worker.log(), 15.0, "the late ack to be refused")
    record = project.record(job_id)
    assert (record.state, record.result, record.token, record.finished_at) == ("succeeded", *newer)
    assert worker.alive()


def test_redis_restart_mid_run_loses_no_acknowledged_enqueue(redis_server: RedisServer, tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    project = Project(folder, redis_server.url + "?prefix=restart")
    try:
        worker = project.worker("-c", "2", "--lease", "2")
        project.wait_consumers(worker, 2)
        acknowledged: list[str] = []
        refused = 0
        done = threading.Event()

        def produce() -> None:
            nonlocal refused
            try:
                for i in range(400):
                    try:
                        acknowledged.append(project.enqueue("work", i, 0.005))
                    except ConveyorError:
                        refused += 1
                    time.sleep(0.005)
            finally:
                done.set()

        producer = threading.Thread(target=produce)
        producer.start()
        wait_for(lambda: len(acknowledged) >= 120, 30.0, "jobs to be enqueued")
        redis_server.kill()  # SIGKILL: only what AOF (fsync always) holds comes back
        time.sleep(2.5)  # longer than redis-py's retries: some calls fail and say so
        redis_server.start()
        producer.join(60)
        assert done.is_set()
        wait_for(lambda: all(r is not None and r.state == "succeeded"
                             for r in project.app.broker.get_many(acknowledged)), 60.0,
                 "every acknowledged job to succeed")
        assert project.app.broker.get_many(acknowledged).count(None) == 0
        report = ledger_report(project, acknowledged)
        assert report["lost"] == []
        assert worker.alive()
        assert "cannot reach Redis" in worker.log()
        assert "is back after" in worker.log()
        print(f"{len(acknowledged)} acknowledged, {refused} refused while Redis was down; "
              f"{len(report['duplicated'])} ran twice")
    finally:
        project.cleanup()


def test_malformed_values_placed_in_a_queue_fail_with_a_reason(project: Project) -> None:
    prefix = project.url.rsplit("prefix=", 1)[1]
    base = "{" + prefix + ":default}"
    client = redis.Redis.from_url(REDIS_URL)
    no_header, bad_payload, unknown_task = (f"by-hand-{i}" for i in range(3))
    client.hset(f"{base}:j:{no_header}", mapping={"state": "queued", "m": "garbage"})
    client.hset(f"{base}:j:{bad_payload}", mapping={"state": "queued", "m": '["work",0,1,null,0,0]\nnot json'})
    client.hset(f"{base}:j:{unknown_task}",
                mapping={"state": "queued", "m": '["no.such.task",0,1,null,0,0]\n{"args":[],"kwargs":{}}'})
    client.rpush(f"{base}:ready:0", no_header, "no-record-at-all", bad_payload, unknown_task)
    client.zadd(f"{base}:prios", {"0": 0})
    client.sadd(f"{prefix}:queues", "default")
    client.close()
    # A job for an unknown task fails at once here (by default it waits for a worker that has it).
    worker = project.worker("-c", "1", "--lease", "2", env={"CONVEYOR_UNKNOWN_TASK_TIMEOUT": "0"})
    good = project.enqueue("noop", 7)
    wait_for(lambda: project.record(good).state == "succeeded", 20.0, "the good job to succeed")
    errors = {}
    for job_id in (no_header, bad_payload, unknown_task):
        record = wait_for(lambda j=job_id: (r := project.record(j)).state == "failed" and r, 10.0, f"{job_id} failed")
        assert record.error is not None
        errors[job_id] = record.error["type"]
        assert record.error["message"]
    assert errors == {no_header: "MalformedMessage", bad_payload: "MalformedMessage", unknown_task: "UnknownTask"}
    assert worker.alive()
    assert project.app.broker.get("no-record-at-all") is None
    again = project.enqueue("noop", 8)
    wait_for(lambda: project.record(again).state == "succeeded", 20.0, "the worker to go on")
