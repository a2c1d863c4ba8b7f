"""Fixtures of the broker contract suite: every test in ``tests/contract`` runs against every broker.

A new broker joins the suite by adding one factory to ``BROKERS`` (a server-backed one calls
``conveyor.testing.require_service`` first, so a missing server skips locally and fails in CI).
The pairing axis is the memory transport with each of ``PAIRED_STORES``; a new transport joins it
as one more ``_paired`` factory. Every broker gets the same :class:`FakeClock`, so tests move time
instead of sleeping.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uuid_utils

from conveyor.brokers import Broker, Message
from conveyor.brokers.memory import MemoryBroker
from conveyor.brokers.memory_transport import MemoryTransport
from conveyor.brokers.paired import PairedBroker
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.testing import FakeClock, require_service

PAYLOAD = b'{"args":[],"kwargs":{}}'
START = 1_700_000_000.0
REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


def _memory(tmp_path: Path, clock: FakeClock) -> Broker:
    return MemoryBroker(clock=clock)


def _sqlite(tmp_path: Path, clock: FakeClock) -> Broker:
    return SQLiteBroker(f"sqlite:///{tmp_path}/c.db", clock=clock)


def _redis_url() -> str:
    """Database 15 (never 0: the benchmark harness flushes it) and a key prefix of its own."""
    require_service(REDIS_URL, "Redis")
    separator = "&" if "?" in REDIS_URL else "?"
    return f"{REDIS_URL}{separator}prefix=contract-{uuid_utils.uuid7().hex}"


def _redis(tmp_path: Path, clock: FakeClock) -> Broker:
    """A Redis store with a key prefix of its own per test, whose keys are deleted at teardown."""
    from conveyor.brokers.redis import RedisBroker

    return RedisBroker(_redis_url(), clock=clock)


def _postgres(tmp_path: Path, clock: FakeClock) -> Broker:
    """A PostgreSQL store in a schema of its own per test, dropped at teardown. The schema is made
    by the store's migrations (about 80 ms here, against about 230 ms for a database copied from
    a template database), so each test starts from exactly what `conveyor migrate` makes."""
    require_service(POSTGRES_URL, "PostgreSQL")
    from conveyor.brokers.postgres import PostgresBroker

    separator = "&" if "?" in POSTGRES_URL else "?"
    store = PostgresBroker(f"{POSTGRES_URL}{separator}schema=contract_{uuid_utils.uuid7().hex[-16:]}", clock=clock)
    store.migrate()
    return store


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The URL of a Redis store with a key prefix of its own (see ``_redis_url``), for tests that
    build their own app; the prefix's keys are deleted at teardown."""
    url = _redis_url()
    yield url
    from conveyor.brokers.redis import RedisBroker

    store = RedisBroker(url)
    try:
        store.drop()
    finally:
        store.close()


class RedisCluster:
    """Three redis-server processes in cluster mode (no replicas), started once for the session."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="conveyor-cluster-"))
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    @staticmethod
    def _free_port() -> int:
        while True:  # the cluster bus listens on port + 10000: both must be free
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port < 55000:
                with socket.socket() as s:
                    try:
                        s.bind(("127.0.0.1", port + 10000))
                    except OSError:
                        continue
                return port

    def start(self) -> str:
        for _ in range(3):
            port = self._free_port()
            folder = self.folder / str(port)
            folder.mkdir()
            self.ports.append(port)
            self.procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no", "--dir", str(folder)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        while not all(_answers(p) for p in self.ports):
            assert time.monotonic() < deadline, "the cluster nodes did not start"
            time.sleep(0.05)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=30)
        while b"cluster_state:ok" not in subprocess.run(
                ["redis-cli", "-p", str(self.ports[0]), "cluster", "info"], capture_output=True, timeout=10).stdout:
            assert time.monotonic() < deadline, "the cluster did not become ready"
            time.sleep(0.05)
        return f"redis://127.0.0.1:{self.ports[0]}/0?cluster=1"

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


_CLUSTER: list[tuple[RedisCluster, str]] = []


def _redis_cluster(tmp_path: Path, clock: FakeClock) -> Broker:
    """A Redis Cluster of three nodes started by the suite (once), a key prefix per test."""
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        if os.environ.get("CI"):
            pytest.fail("redis-server and redis-cli are needed for the cluster tests (CI is set)")
        pytest.skip("redis-server and redis-cli are not installed")
    if not _CLUSTER:
        cluster = RedisCluster()
        try:
            _CLUSTER.append((cluster, cluster.start()))
        except BaseException:
            cluster.stop()
            raise
    from conveyor.brokers.redis import RedisBroker

    return RedisBroker(f"{_CLUSTER[0][1]}&prefix=contract-{uuid_utils.uuid7().hex}", clock=clock)


@pytest.fixture(scope="session", autouse=True)
def _stop_cluster() -> Iterator[None]:
    yield
    while _CLUSTER:
        _CLUSTER.pop()[0].stop()


def _paired(store: Callable[[Path, FakeClock], Broker]) -> Callable[[Path, FakeClock], Broker]:
    """The pairing axis: the memory transport carries the jobs of ``store``."""

    def factory(tmp_path: Path, clock: FakeClock) -> Broker:
        return PairedBroker(MemoryTransport(), store(tmp_path, clock))

    return factory


#: The stores a transport can be paired with (the pairing axis).
PAIRED_STORES: dict[str, Callable[[Path, FakeClock], Broker]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "redis-cluster": _redis_cluster,
    "postgres": _postgres,
}


def _real_transports() -> dict[str, Callable[[Path, FakeClock], Broker]]:
    """Real transports join the pairing axis as one module each beside this file,
    ``pairing_<name>.py``, defining ``make_transport(tmp_path) -> Transport`` (which calls
    ``require_service`` first, so a missing server skips locally and fails in CI; the transport
    may have a ``drop()`` that deletes what the test made) and ``STORES``: the names of
    ``PAIRED_STORES`` it is paired with in the suite."""
    found: dict[str, Callable[[Path, FakeClock], Broker]] = {}
    for path in sorted(Path(__file__).parent.glob("pairing_*.py")):
        spec = importlib.util.spec_from_file_location(f"contract_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        name = path.stem.removeprefix("pairing_")
        for store_name in module.STORES:
            found[f"{name}+{store_name}"] = _with_transport(module.make_transport, PAIRED_STORES[store_name])
    return found


def _with_transport(make_transport: Callable[[Path], Any],
                    store: Callable[[Path, FakeClock], Broker]) -> Callable[[Path, FakeClock], Broker]:
    def factory(tmp_path: Path, clock: FakeClock) -> Broker:
        return PairedBroker(make_transport(tmp_path), store(tmp_path, clock))

    return factory


BROKERS: dict[str, Callable[[Path, FakeClock], Broker]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "redis-cluster": _redis_cluster,
    "postgres": _postgres,
    **{f"memory-transport+{name}": _paired(store) for name, store in PAIRED_STORES.items()},
    **_real_transports(),
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(params=list(BROKERS))
def broker(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Broker]:
    made = BROKERS[request.param](tmp_path, clock)
    made.open()
    try:
        yield made
    finally:
        # Brokers on a shared server delete their keys (a paired one: its store's and its transport's).
        parts = [made] if not isinstance(made, PairedBroker) else [made.store, made.transport]
        for part in parts:
            drop = getattr(part, "drop", None)
            if drop is not None:
                drop()
        made.close()


@pytest.fixture(params=list(PAIRED_STORES))
def paired_store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Broker:
    """An unopened store of the pairing axis, for tests of what pairing adds."""
    return PAIRED_STORES[request.param](tmp_path, clock)


@pytest.fixture
def make(clock: FakeClock) -> Callable[..., Message]:
    """Build a Message: ``make(queue="media", priority=5, key="k", run_at=clock() + 60)``."""

    def make(queue: str = "default", task: str = "tests.noop", **fields: Any) -> Message:
        fields.setdefault("created_at", clock())
        return Message(id=str(uuid_utils.uuid7()), task=task, queue=queue, payload=PAYLOAD, **fields)

    return make
