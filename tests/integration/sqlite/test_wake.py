"""An idle SQLite consumer sleeps until a writer on this host wakes it (a datagram to its socket),
with a slow ``data_version`` poll as the fallback for writers that send no wake."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from conveyor.brokers import Message
from conveyor.brokers.sqlite import SQLiteBroker

ENQUEUER = textwrap.dedent("""
    import sys
    from conveyor.brokers import Message
    from conveyor.brokers.sqlite import SQLiteBroker

    broker = SQLiteBroker(sys.argv[1])
    broker.open()
    print("ready", flush=True)
    sys.stdin.readline()
    broker.enqueue([Message(id="from-elsewhere", task="t", queue="default", payload=b"{}")])
    print("done", flush=True)
    broker.close()
""")


def waiting(broker: SQLiteBroker, timeout: float) -> tuple[threading.Thread, list[float]]:
    """``broker.wait`` in a thread, after an empty fetch (as a consumer does); the list gets the
    monotonic time at which it returned."""
    assert broker.fetch(["default"], 10, 30.0, "c1") == []
    returned: list[float] = []

    def run() -> None:
        broker.wait(["default"], timeout)
        returned.append(time.monotonic())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, returned


def test_an_enqueue_in_another_process_wakes_a_waiting_consumer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db?poll=30"  # the fallback poll would take 30 s
    consumer = SQLiteBroker(url)
    consumer.open()
    with subprocess.Popen([sys.executable, "-c", ENQUEUER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as child:
        assert child.stdout is not None and child.stdin is not None
        try:
            assert child.stdout.readline().strip() == "ready"
            thread, returned = waiting(consumer, 30.0)
            time.sleep(0.3)  # the consumer is blocked in wait()
            assert not returned
            sent = time.monotonic()
            child.stdin.write("go\n")
            child.stdin.flush()
            thread.join(10)
            assert returned, "wait() did not return"
            assert returned[0] - sent < 2.0  # a wake, not the 30 s fallback (it takes milliseconds)
            assert child.stdout.readline().strip() == "done"
            assert [lease.job_id for lease in consumer.fetch(["default"], 10, 30.0, "c1")] == ["from-elsewhere"]
        finally:
            child.kill()
            consumer.close()


def test_a_commit_that_sends_no_wake_is_seen_by_the_slow_poll(tmp_path: Path) -> None:
    consumer = SQLiteBroker(f"sqlite:///{tmp_path}/c.db?poll=0.2")
    consumer.open()
    try:
        thread, returned = waiting(consumer, 30.0)
        time.sleep(0.3)
        assert not returned
        written = time.monotonic()
        with sqlite3.connect(tmp_path / "c.db") as conn:  # a writer that knows nothing of wakes
            conn.execute("INSERT INTO conveyor_queues (name, paused) VALUES ('other', 0)")
        thread.join(10)
        assert returned and returned[0] - written < 5.0
    finally:
        consumer.close()


def test_wait_still_ends_at_its_timeout(tmp_path: Path) -> None:
    consumer = SQLiteBroker(f"sqlite:///{tmp_path}/c.db")
    consumer.open()
    try:
        began = time.monotonic()
        thread, returned = waiting(consumer, 0.3)
        thread.join(10)
        assert returned and 0.25 <= returned[0] - began < 3.0
    finally:
        consumer.close()


def test_a_hand_back_wakes_a_sibling(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db?poll=30"
    worker, sibling = SQLiteBroker(url), SQLiteBroker(url)
    worker.open()
    sibling.open()
    try:
        worker.enqueue([Message(id="j1", task="t", queue="default", payload=b"{}")])
        (lease,) = worker.fetch(["default"], 10, 30.0, "w1")
        thread, returned = waiting(sibling, 30.0)
        time.sleep(0.3)
        assert not returned
        sent = time.monotonic()
        from conveyor.brokers import Outcome

        assert worker.ack([Outcome(lease.job_id, lease.token, "queued")]) == [True]
        thread.join(10)
        assert returned and returned[0] - sent < 2.0
    finally:
        worker.close()
        sibling.close()


def test_close_removes_the_wake_socket_and_a_dead_one_is_cleared(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db?poll=0.05"
    consumer, other = SQLiteBroker(url), SQLiteBroker(url)
    for broker in (consumer, other):
        broker.open()
        broker.fetch(["default"], 10, 30.0, "c1")
        broker.wait(["default"], 0.01)
    folder = consumer.wake_folder
    assert len(os.listdir(folder)) == 2
    consumer.close()
    assert len(os.listdir(folder)) == 1
    other.close()
    assert not os.path.exists(folder)  # the last one out removes the folder
    # a waiter killed without closing leaves its socket file: the next wake removes it
    os.mkdir(folder)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(os.path.join(folder, "12345-dead"))
    dead.close()
    producer = SQLiteBroker(url)
    producer.open()
    try:
        producer.enqueue([Message(id="j1", task="t", queue="default", payload=b"{}")])
        assert os.listdir(folder) == []
    finally:
        producer.close()
