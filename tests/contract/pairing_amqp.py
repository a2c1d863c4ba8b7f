"""The ``amqp://`` transport (RabbitMQ) on the contract suite's pairing axis: a queue prefix of its
own per test (its queues are deleted at teardown), and priorities (``x-max-priority``), which the
suite's priority tests ask of every broker."""

from __future__ import annotations

import os
from pathlib import Path

import uuid_utils

from conveyor.brokers.amqp import AMQPTransport
from conveyor.testing import require_service

AMQP_URL = os.environ.get("CONVEYOR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
STORES = ("sqlite", "redis", "postgres")


def make_transport(tmp_path: Path) -> AMQPTransport:
    require_service(AMQP_URL, "RabbitMQ")
    separator = "&" if "?" in AMQP_URL else "?"
    return AMQPTransport(f"{AMQP_URL}{separator}prefix=contract-{uuid_utils.uuid7().hex}.&max_priority=20")
