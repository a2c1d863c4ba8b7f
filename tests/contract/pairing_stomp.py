"""The ``stomp://`` transport (RabbitMQ's STOMP plugin) on the contract suite's pairing axis: a
destination prefix of its own per test, priorities (``x-max-priority``), and a ``drop()`` that
deletes the test's queues over AMQP (STOMP itself cannot delete a queue)."""

from __future__ import annotations

import os
from pathlib import Path

import pika
import uuid_utils

from conveyor.brokers.stomp import STOMPTransport
from conveyor.testing import require_service

STOMP_URL = os.environ.get("CONVEYOR_TEST_STOMP_URL", "stomp://guest:guest@127.0.0.1:61613/")
AMQP_URL = os.environ.get("CONVEYOR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
STORES = ("sqlite", "redis", "postgres")


class DroppingSTOMPTransport(STOMPTransport):
    """A STOMP transport whose queues are deleted at teardown (over AMQP, on the same RabbitMQ)."""

    def fork(self) -> DroppingSTOMPTransport:
        return DroppingSTOMPTransport(self.url)

    def drop(self) -> None:
        delete_queues(self.queue_names())


def delete_queues(names: list[str]) -> None:
    if not names:
        return
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        for name in names:
            channel.queue_delete(name)
    finally:
        connection.close()


def make_transport(tmp_path: Path) -> STOMPTransport:
    require_service(STOMP_URL, "RabbitMQ's STOMP plugin")
    separator = "&" if "?" in STOMP_URL else "?"
    return DroppingSTOMPTransport(f"{STOMP_URL}{separator}prefix=contract-{uuid_utils.uuid7().hex}.&max_priority=20")
