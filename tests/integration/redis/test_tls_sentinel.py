"""``rediss://`` (TLS) and ``redis+sentinel://`` (the primary named by Sentinel, followed through a
failover) against ``redis-server`` processes the tests start on ports of their own."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis_support import Project, RedisServer, free_port, message, need_redis_server, wait_for

from conveyor.brokers import Outcome
from conveyor.brokers.redis import RedisBroker
from conveyor.errors import BrokerError


@pytest.fixture
def servers() -> Iterator[list[RedisServer]]:
    """Servers a test starts (``run(servers, RedisServer(...))``), killed at teardown."""
    need_redis_server()
    started: list[RedisServer] = []
    try:
        yield started
    finally:
        for server in reversed(started):
            server.kill()


def run(servers: list[RedisServer], server: RedisServer) -> RedisServer:
    servers.append(server)
    server.start()
    return server


def in_sync(sentinel: redis.Redis, replica: RedisServer) -> bool:
    return any(r["port"] == replica.port and r.get("master-link-status") == "ok"
               for r in sentinel.sentinel_slaves("main"))


def all_succeeded(project: Project, job_ids: list[str]) -> bool:
    return all(r is not None and r.state == "succeeded" for r in project.app.broker.get_many(job_ids))


def test_a_worker_runs_jobs_over_tls(tmp_path: Path, servers: list[RedisServer]) -> None:
    server = run(servers, RedisServer(tmp_path / "tls", tls=True))
    project = Project(tmp_path, server.url + "&prefix=tls")
    try:
        project.worker("--concurrency", "2")
        jobs = [project.enqueue("noop", i) for i in range(30)]
        wait_for(lambda: all_succeeded(project, jobs), 30.0, "30 jobs run by a worker over TLS")
        assert [project.app.get_job(j).result(timeout=1) for j in jobs[:3]] == [0, 1, 2]
    finally:
        project.cleanup()
    plain = redis.Redis(port=server.port, socket_timeout=1)
    with pytest.raises(redis.RedisError):  # the port speaks TLS only: nothing went in clear text
        plain.ping()


def test_an_untrusted_certificate_is_a_clear_error(tmp_path: Path, servers: list[RedisServer]) -> None:
    server = run(servers, RedisServer(tmp_path / "tls", tls=True))
    broker = RedisBroker(f"rediss://127.0.0.1:{server.port}/0?socket_connect_timeout=1")  # the system's CAs
    with pytest.raises(BrokerError, match=f"cannot reach Redis at 127.0.0.1:{server.port}/0: .*certificate"):
        broker.open()
    broker.close()


def test_sentinel_names_the_primary_and_a_worker_follows_it_when_the_primary_dies(tmp_path: Path,
                                                                                  servers: list[RedisServer]) -> None:
    primary = run(servers, RedisServer(tmp_path / "primary"))
    replica = run(servers, RedisServer(tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port)))
    sentinel = run(servers, RedisServer(tmp_path / "sentinel", monitor=("main", primary.port)))
    watch = sentinel.client()
    wait_for(lambda: in_sync(watch, replica), 30.0, "Sentinel to see the replica in sync")

    project = Project(tmp_path, f"redis+sentinel://127.0.0.1:{sentinel.port}/main/0?prefix=ha")
    try:
        worker = project.worker("--concurrency", "2")
        before = [project.enqueue("noop", i) for i in range(30)]
        wait_for(lambda: all_succeeded(project, before), 30.0, "30 jobs on the first primary")
        assert primary.client().execute_command("WAIT", 1, 5000) == 1  # the replica has every write

        primary.kill()  # SIGKILL: Sentinel sees it down after 1 s and promotes the replica
        wait_for(lambda: watch.sentinel_get_master_addr_by_name("main")[1] == replica.port, 30.0,
                 "Sentinel to name the replica as the primary")
        after = [project.enqueue("noop", i) for i in range(30)]  # the producer follows too
        wait_for(lambda: all_succeeded(project, before + after), 60.0, "60 jobs across the failover")
        assert worker.alive()
        assert replica.client().exists(*[f"{{ha:default}}:j:{j}" for j in after]) == 30  # on the new primary
        log = worker.log()
        assert "cannot reach Redis at main (primary named by Sentinel" in log, log
        assert "is back after" in log, log
    finally:
        project.cleanup()


def test_sentinel_broker_leases_and_acks_after_a_failover(tmp_path: Path, servers: list[RedisServer]) -> None:
    primary = run(servers, RedisServer(tmp_path / "primary"))
    replica = run(servers, RedisServer(tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port)))
    sentinel = run(servers, RedisServer(tmp_path / "sentinel", monitor=("main", primary.port)))
    watch = sentinel.client()
    wait_for(lambda: in_sync(watch, replica), 30.0, "Sentinel to see the replica in sync")
    broker = RedisBroker(f"redis+sentinel://127.0.0.1:{sentinel.port}/main/0?prefix=ha")
    broker.open()
    try:
        messages = [message() for _ in range(10)]
        broker.enqueue(messages)
        leases = broker.fetch(["default"], 5, 30, "c1")
        assert primary.client().execute_command("WAIT", 1, 5000) == 1
        watch.sentinel_failover("main")  # the old primary lives on, turned into a replica
        wait_for(lambda: primary.client().info("replication")["role"] == "slave", 60.0,
                 "Sentinel to turn the old primary into a replica")
        # leased on the old primary, acked on the new one (the old one answers READONLY: the broker
        # asks Sentinel again); the tokens were replicated
        assert broker.ack([Outcome(lease.job_id, lease.token, "succeeded", result=b"1") for lease in leases]) == [
            True] * 5
        rest = broker.fetch(["default"], 10, 30, "c1")
        assert sorted(lease.job_id for lease in rest) == sorted(m.id for m in messages[5:])
        wait_for(lambda: broker.counts()["default"]["succeeded"] == 5, 10.0, "5 succeeded on the new primary")
    finally:
        broker.close()


def test_rediss_sentinel_reaches_a_tls_primary(tmp_path: Path, servers: list[RedisServer]) -> None:
    import trustme

    ca = trustme.CA()
    primary = run(servers, RedisServer(tmp_path / "primary", tls=True, ca=ca))
    replica = run(servers, RedisServer(tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port),
                                       tls=True, ca=ca))
    sentinel = run(servers, RedisServer(tmp_path / "sentinel", tls=True, ca=ca, monitor=("main", primary.port)))
    watch = sentinel.client()
    wait_for(lambda: in_sync(watch, replica), 30.0, "Sentinel to see the replica in sync over TLS")
    broker = RedisBroker(f"rediss+sentinel://127.0.0.1:{sentinel.port}/main/0?prefix=ha&ssl_ca_certs={primary.ca}")
    broker.open()
    try:
        m = message()
        broker.enqueue([m])
        (lease,) = broker.fetch(["default"], 1, 30, "c1")
        assert broker.ack([Outcome(m.id, lease.token, "succeeded", result=b"1")]) == [True]
        assert primary.client().hget(f"{{ha:default}}:j:{m.id}", "state") == b"succeeded"  # on the TLS primary
    finally:
        broker.close()


@pytest.mark.parametrize(("url", "reason"), [
    ("redis+sentinel://127.0.0.1:26379", "names the primary"),
    ("redis+sentinel://127.0.0.1:26379/main/zero", "names the primary"),
    ("redis+sentinel://127.0.0.1:port/main", "bad Sentinel address"),
    ("redis+sentinel://127.0.0.1/main?cluster=1", "cluster=1 cannot be used with Sentinel"),
    ("redis://127.0.0.1/0?sentinel_password=x", "redis\\+sentinel:// URLs only"),
    ("redis://:hunter2@127.0.0.1/0?sentinal=1", "unknown Redis URL option 'sentinal' in 'redis://:\\*\\*\\*@"),
    ("redis+sentinel://127.0.0.1/main?sentinel_password=hunter2&bogus=1", "unknown Redis URL option 'bogus'"),
])
def test_a_bad_sentinel_url_is_refused_with_its_reason(url: str, reason: str) -> None:
    with pytest.raises(BrokerError, match=reason) as caught:
        RedisBroker(url)
    assert "hunter2" not in str(caught.value)


def test_unreachable_sentinels_are_a_clear_error() -> None:
    port = free_port()
    broker = RedisBroker(f"redis+sentinel://127.0.0.1:{port}/main/0?socket_connect_timeout=0.2")
    where = re.escape(f"main (primary named by Sentinel 127.0.0.1:{port})/0")
    with pytest.raises(BrokerError, match=f"cannot reach Redis at {where}: no Sentinel answered") as refused:
        broker.open()
    assert len(str(refused.value)) < 300, refused.value  # not redis-py's repr of every client
    broker.close()
