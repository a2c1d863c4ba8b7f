"""Fixtures of the Redis integration tests; they and the helpers live in ``redis_support`` (a name
of its own: ``from conftest import`` would find whichever conftest.py pytest imported first)."""

from redis_support import broker, project, redis_server

__all__ = ["broker", "project", "redis_server"]
