"""``GET /metrics``: the store's state for Prometheus, read at scrape time by a custom collector
(nothing is counted in this process, so any number of web processes report the same values)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..app import Conveyor
from ..brokers import STATES
from . import handlers

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StoreCollector(Collector):
    """Jobs by queue and state, paused queues, workers, and the last minute's throughput and run times."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        store = self.app.store
        jobs = GaugeMetricFamily("conveyor_jobs", "Jobs in the store by queue and state.", labels=["queue", "state"])
        reserved = GaugeMetricFamily("conveyor_jobs_reserved",
                                     "Running jobs a worker holds that have not started yet (part of running).",
                                     labels=["queue"])
        paused = GaugeMetricFamily("conveyor_queue_paused", "1 when the queue is paused.", labels=["queue"])
        for q in handlers.list_queues(self.app)["queues"]:
            for state in STATES:
                jobs.add_metric([q["name"], state], q["counts"][state])
            reserved.add_metric([q["name"]], q["counts"]["reserved"])
            paused.add_metric([q["name"]], 1.0 if q["paused"] else 0.0)
        yield jobs
        yield reserved
        yield paused

        workers = store.workers()
        yield GaugeMetricFamily("conveyor_workers", "Workers heard from in the last minute.", value=len(workers))
        rss = GaugeMetricFamily("conveyor_worker_rss_bytes", "Resident memory of a worker process.",
                                labels=["worker", "hostname", "pid"])
        busy = GaugeMetricFamily("conveyor_worker_running_jobs", "Jobs a worker is running.",
                                 labels=["worker", "hostname", "pid"])
        processed = GaugeMetricFamily("conveyor_worker_processed_jobs", "Jobs a worker has finished since it started.",
                                      labels=["worker", "hostname", "pid"])
        for w in workers:
            labels = [w.id, w.hostname, str(w.pid)]
            rss.add_metric(labels, w.rss)
            busy.add_metric(labels, len(w.current))
            processed.add_metric(labels, w.processed)
        yield rss
        yield busy
        yield processed

        now = store.clock()
        rows = store.stats(now - 60.0, 60.0)
        done = GaugeMetricFamily("conveyor_jobs_finished_last_minute", "Jobs finished in the last minute.",
                                 labels=["queue", "state"])
        run = GaugeMetricFamily("conveyor_job_run_seconds_last_minute",
                                "Run time of the jobs finished in the last minute.", labels=["queue", "stat"])
        wait = GaugeMetricFamily("conveyor_job_wait_seconds_last_minute",
                                 "Mean time from enqueue to start of the jobs finished in the last minute.",
                                 labels=["queue"])
        for row in rows:
            done.add_metric([row["queue"], "succeeded"], row["succeeded"])
            done.add_metric([row["queue"], "failed"], row["failed"])
            if row["run_mean"] is not None:
                run.add_metric([row["queue"], "mean"], row["run_mean"])
                run.add_metric([row["queue"], "p95"], row["run_p95"])
            if row["wait_mean"] is not None:
                wait.add_metric([row["queue"]], row["wait_mean"])
        yield done
        yield run
        yield wait


def registry_for(app: Conveyor) -> CollectorRegistry:
    """A registry of its own (never the global one) holding the store collector of ``app``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(app))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The exposition text of ``registry``."""
    return generate_latest(registry)
