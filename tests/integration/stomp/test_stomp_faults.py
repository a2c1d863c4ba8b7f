"""Faults over ``stomp://`` with real worker processes (Redis store): a SIGKILL storm while 5,000
jobs drain, and RabbitMQ closing every connection (STOMP's too) mid-run."""

from __future__ import annotations

from transport_support import Project, kill_storm, server_closes_every_connection


def test_sigkill_storm_while_5000_jobs_drain_loses_none_over_stomp(redis_project: Project) -> None:
    kill_storm(redis_project)


def test_rabbitmq_closing_every_stomp_connection_loses_nothing(redis_project: Project) -> None:
    server_closes_every_connection(redis_project, "lost the connection to the STOMP server", "is back after")
