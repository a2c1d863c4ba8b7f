"""Celery's side of ``python -m bench.amqp``: the same no-op task on the same RabbitMQ.

As a worker module: ``celery -A amqp_celery worker -P prefork -c 2`` (with ``bench/`` on the path).
As a producer: ``python -m amqp_celery prefill N`` publishes N tasks in one ``group``. The broker,
queue and result backend (none when empty) come from ``BENCH_CELERY_BROKER``,
``BENCH_CELERY_QUEUE`` and ``BENCH_CELERY_RESULTS``. Celery's defaults otherwise (prefetch
multiplier 4, early acks, JSON).
"""

from __future__ import annotations

import os
import sys

from celery import Celery, group

app = Celery("bench", broker=os.environ["BENCH_CELERY_BROKER"], backend=os.environ.get("BENCH_CELERY_RESULTS") or None)
app.conf.task_default_queue = os.environ.get("BENCH_CELERY_QUEUE", "celery")
app.conf.broker_connection_retry_on_startup = True  # only silences a start-up warning
app.conf.worker_hijack_root_logger = False


@app.task(ignore_result=not os.environ.get("BENCH_CELERY_RESULTS"))
def noop(x: int) -> int:
    """Does nothing and returns its argument."""
    return x


if __name__ == "__main__":
    if sys.argv[1:2] == ["prefill"]:
        n = int(sys.argv[2])
        for start in range(0, n, 1000):
            group(noop.s(i) for i in range(start, min(n, start + 1000))).apply_async()
