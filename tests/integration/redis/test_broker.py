"""The Redis broker's own promises beyond the contract: events, blocking wake-up without polling,
start-up warnings about settings that lose jobs, clear errors when Redis is out of reach."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import redis
from redis_support import REDIS_URL, RedisServer, free_port, message

from conveyor.brokers import Outcome
from conveyor.brokers.redis import LAYOUT, RedisBroker
from conveyor.errors import BrokerError


def test_every_state_change_is_published(broker: RedisBroker) -> None:
    seen: list[dict[str, Any]] = []
    ready = threading.Event()

    def listen() -> None:
        events = broker.fork().events(poll=0.05)  # type: ignore[attr-defined]
        ready.set()
        for event in events:
            seen.append(event)
            if event["state"] == "deleted":
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ready.wait(5)
    time.sleep(0.3)  # the subscription is in place
    m = message()
    broker.enqueue([m])
    (lease,) = broker.fetch(["default"], 1, 30, "c1")
    broker.ack([Outcome(m.id, lease.token, "succeeded", result=b"1")])
    assert broker.delete(m.id)
    listener.join(10)
    assert [(e["queue"], e["state"], e["ids"]) for e in seen] == [
        ("default", s, [m.id]) for s in ("queued", "running", "succeeded", "deleted")]
    assert all(isinstance(e["at"], float) for e in seen)


def test_an_idle_consumer_blocks_and_wakes_at_once_on_enqueue(redis_server: RedisServer) -> None:
    # a server of its own: its command counts are this test's alone
    broker = RedisBroker(redis_server.url)
    broker.open()
    client = redis_server.client()
    assert broker.fetch(["default"], 10, 30, "c1") == []
    woke: list[float] = []

    def consumer() -> None:
        broker.wait(["default"], 5.0)
        woke.append(time.monotonic())

    before = client.info("commandstats").get("cmdstat_blpop", {}).get("calls", 0)
    waiter = threading.Thread(target=consumer)
    waiter.start()
    time.sleep(0.5)
    assert not woke, "wait() returned without work"
    enqueued = time.monotonic()
    broker.enqueue([message()])
    waiter.join(5)
    client_calls = client.info("commandstats").get("cmdstat_blpop", {}).get("calls", 0) - before
    client.close()
    assert woke and woke[0] - enqueued < 0.5
    assert client_calls <= 2, f"{client_calls} BLPOPs for one wait: polling, not blocking"
    assert len(broker.fetch(["default"], 10, 30, "c1")) == 1
    broker.close()


def test_a_scheduled_job_wakes_a_waiting_consumer_when_due(broker: RedisBroker) -> None:
    broker.enqueue([message(run_at=time.time() + 0.4)])
    assert broker.fetch(["default"], 10, 30, "c1") == []
    started = time.monotonic()
    broker.wait(["default"], 5.0)
    assert time.monotonic() - started < 1.5
    time.sleep(max(0.0, 0.45 - (time.monotonic() - started)))
    assert len(broker.fetch(["default"], 10, 30, "c1")) == 1


def test_start_up_warns_about_settings_that_lose_jobs(redis_server: RedisServer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    client = redis.Redis(port=redis_server.port)
    client.config_set("appendonly", "no")
    client.config_set("save", "")
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.close()
    broker = RedisBroker(redis_server.url)
    with caplog.at_level(logging.WARNING, logger="conveyor.brokers.redis"):
        broker.open()
    broker.close()
    lines = [r.getMessage() for r in caplog.records]
    assert any("maxmemory-policy is allkeys-lru" in line and "evicts" in line for line in lines), lines
    assert any("persistence is off" in line and "loses every job" in line for line in lines), lines


def test_an_unreachable_server_is_a_clear_broker_error(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    broker = RedisBroker(f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.2")
    with pytest.raises(BrokerError, match=f"cannot reach Redis at 127.0.0.1:{port}/0"):
        broker.open()
    with pytest.raises(BrokerError, match="cannot reach Redis"):
        broker.fetch(["default"], 1, 30, "c1")
    started = time.monotonic()
    broker.wait(["default"], 0.3)  # never raises: the next fetch reports the outage
    assert time.monotonic() - started < 10
    assert any("cannot reach Redis" in r.getMessage() for r in caplog.records)
    broker.close()


def test_open_of_an_unreachable_server_raises_without_claiming_to_retry(caplog: pytest.LogCaptureFixture) -> None:
    """One consistent message: open() is not retried, so it does not log that it is; a command
    that is retried says for how long, once."""
    port = free_port()
    broker = RedisBroker(f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.2")
    with pytest.raises(BrokerError, match=f"cannot reach Redis at 127.0.0.1:{port}/0"):
        broker.open()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    with pytest.raises(BrokerError):
        broker.fetch(["default"], 1, 30, "c1")
    said = [r.getMessage() for r in caplog.records if "cannot reach Redis" in r.getMessage()]
    assert len(said) == 1 and "retrying for up to 2.5s" in said[0], said
    broker.close()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/15?nonsense=1", "redis://127.0.0.1:6379/15?prefix=a{b}",
                                 "redis://127.0.0.1:6379/15?prefix=", "http://127.0.0.1:6379/15",
                                 "redis://127.0.0.1:port/0", "redis://127.0.0.1:99999/0", "redis://[::1/0",
                                 "redis+sentinel://[::1/main", "redis://127.0.0.1/0?ssl_ca_certs=/ca.pem",
                                 "redis+sentinel://127.0.0.1:99999/main", "redis://:ab/cd@127.0.0.1:6379/0"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(BrokerError) as refused:
        RedisBroker(url)
    assert "cd@" not in str(refused.value)  # no part of a password


def test_the_key_layout_version_is_written_once_and_a_different_one_is_refused(broker: RedisBroker) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    key = broker.prefix + ":layout"
    assert client.get(key) == LAYOUT.encode()  # written by open()
    client.set(key, "99")  # as a later Conveyor with another layout would have left it
    other = RedisBroker(broker.url)
    with pytest.raises(BrokerError, match=f"holds Conveyor data of key layout 99 under prefix {broker.prefix!r}.*"
                                          f"reads layout {LAYOUT}"):
        other.open()
    other.close()
    client.set(key, LAYOUT)
    client.close()


def test_a_user_who_may_only_read_can_open_a_new_prefix(redis_server: RedisServer) -> None:
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "reader", "on", ">secret", "~*", "&*", "+@read", "+@connection",
                          "+script|exists", "+script|load", "+config|get")
    broker = RedisBroker(f"redis://reader:secret@127.0.0.1:{redis_server.port}/0?prefix=ro")
    broker.open()  # the layout cannot be written: it is not required to read
    assert broker.counts() == {}
    broker.close()
    assert admin.get("ro:layout") is None
    admin.close()
