"""Fault tests of the Redis broker against real servers and the real ``conveyor worker`` command.

Every test gets a key prefix of its own on database 15 (never 0: the benchmark harness flushes it),
deleted at teardown; the restart test starts a second ``redis-server`` of its own. Workers run as
subprocesses in their own process group (SIGKILLed at teardown) from a folder holding ``tasks.py``.
Tasks write a ledger outside Redis (one ``write(2)`` per line with ``O_APPEND``), from which the
tests count lost, duplicated and overlapping runs.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import uuid_utils

from conveyor import Conveyor
from conveyor.brokers import JobRecord, Message
from conveyor.brokers.redis import RedisBroker
from conveyor.testing import require_service, wait_for
from fault_ledger import kill_workers, read_ledger

REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

TASKS = '''\
import os
import time
from pathlib import Path

from conveyor import Conveyor, current_job

HERE = Path(__file__).resolve().parent
app = Conveyor()  # URL from CONVEYOR_URL


def note(text):
    fd = os.open(HERE / "ledger.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\\n").encode())
    finally:
        os.close(fd)


@app.task(name="work", retries=20, backoff=0.05)
def work(n: int, seconds: float = 0.02) -> int:
    job = current_job()
    note(f"start {job.id} {job.attempt} {os.getpid()} {time.time()!r}")
    time.sleep(seconds)
    note(f"end {job.id} {job.attempt} {os.getpid()} {time.time()!r}")
    return os.getpid()


@app.task(name="noop")
def noop(n: int = 0) -> int:
    return n
'''

_counter = itertools.count()
_BIN = Path(sys.executable).with_name("conveyor")
CONVEYOR = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "conveyor.cli"]


class Worker:
    """A running ``conveyor worker`` (the supervisor) and its log."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc, self.log_path = proc, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[psutil.Process]:
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill_group(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGCONT)  # a stopped process ignores SIGKILL until continued
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


class Project:
    """``tasks.py`` in a folder, an app on ``url`` in this process, and workers started from there."""

    def __init__(self, folder: Path, url: str) -> None:
        self.folder, self.url = folder, url
        (folder / "tasks.py").write_text(TASKS)
        self.workers: list[Worker] = []
        self.app = self._load_app()

    def _load_app(self) -> Conveyor:
        """The tasks module's app, loaded in this process under a unique module name."""
        saved = {k: os.environ.pop(k) for k in [k for k in os.environ if k.startswith("CONVEYOR_")]}
        os.environ["CONVEYOR_URL"] = self.url
        try:
            spec = importlib.util.spec_from_file_location(f"redis_it_tasks_{next(_counter)}", self.folder / "tasks.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            app: Conveyor = module.app
            app.open()
        finally:
            os.environ.pop("CONVEYOR_URL", None)
            os.environ.update(saved)
        return app

    def worker(self, *flags: str, env: dict[str, str] | None = None) -> Worker:
        log = self.folder / f"worker{len(self.workers)}.log"
        extra = env or {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(CONVEYOR_URL=self.url, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", **extra)
        with log.open("wb") as out:
            proc = subprocess.Popen([*CONVEYOR, "worker", "tasks:app", *flags], cwd=self.folder, env=env,
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        worker = Worker(proc, log)
        self.workers.append(worker)
        return worker

    def wait_consumers(self, worker: Worker, n: int, timeout: float = 20.0) -> None:
        def up() -> bool:
            assert worker.alive(), f"worker exited with {worker.proc.returncode}:\n{worker.log()}"
            mine = [w for w in self.app.broker.workers() if w.supervisor and f":{worker.pid}:" in w.supervisor]
            return len(mine) >= n

        wait_for(up, timeout, f"{n} consumer(s) of worker {worker.pid} to report")

    def enqueue(self, task: str, *args: object) -> str:
        return self.app.enqueue(task, args=list(args)).id

    def record(self, job_id: str) -> JobRecord:
        record = self.app.broker.get(job_id)
        assert record is not None, f"job {job_id} is gone"
        return record

    def ledger(self) -> list[list[str]]:
        return read_ledger(self.folder)

    def cleanup(self) -> None:
        kill_workers(self.workers, lambda worker: worker.log(), "log")
        self.app.close()


def unique_url(base: str) -> tuple[str, str]:
    prefix = f"it-{uuid_utils.uuid7().hex}"
    return f"{base}{'&' if '?' in base else '?'}prefix={prefix}", prefix


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    """A project on database 15 of the shared Redis under a prefix of its own."""
    require_service(REDIS_URL, "Redis")
    url, _ = unique_url(REDIS_URL)
    made = Project(tmp_path, url)
    try:
        yield made
    finally:
        made.cleanup()
        RedisBroker(url).drop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A ``redis-server`` of the test's own, with AOF fsynced on every write.

    ``args`` go on its command line (``--replicaof ...``). ``tls=True`` serves TLS only, with a CA and
    a certificate for 127.0.0.1 made by trustme (:attr:`ca` is the CA file). ``monitor=(name,
    port)`` runs it as a Sentinel watching the primary ``name`` at ``port`` (quorum 1, down after 1 s).
    """

    def __init__(self, folder: Path, *args: str, tls: bool = False, monitor: tuple[str, int] | None = None,
                 ca: Any = None) -> None:
        self.folder, self.port = folder, free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.args, self.tls, self.monitor = list(args), tls, monitor
        self.authority = ca  # a trustme.CA shared by servers that must trust each other (else their own)
        self.ca = self.folder / "ca.pem"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = False  # once it ran, a restart keeps its port (clients reconnect there)

    @property
    def url(self) -> str:
        if self.tls and self.monitor is None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca}"
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        if self.tls and self.monitor is None:
            return redis.Redis(port=self.port, ssl=True, ssl_ca_certs=str(self.ca))
        return redis.Redis(port=self.port)

    def _tls_files(self) -> list[str]:
        """Write the CA, a certificate for 127.0.0.1 and its key; their redis-server options."""
        import trustme

        if self.authority is None:
            self.authority = trustme.CA()
        cert = self.authority.issue_cert("127.0.0.1", "localhost")
        self.authority.cert_pem.write_to_path(str(self.ca))
        cert.private_key_pem.write_to_path(str(self.folder / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.folder / "cert.pem"))
        return ["tls-cert-file", str(self.folder / "cert.pem"), "tls-key-file", str(self.folder / "key.pem"),
                "tls-ca-cert-file", str(self.ca), "tls-auth-clients", "no", "tls-replication", "yes"]

    def _command(self, binary: str) -> list[str]:
        if self.monitor is not None:  # with tls: listens in clear text, talks TLS to the servers it watches
            name, primary = self.monitor
            conf = self.folder / "sentinel.conf"  # Sentinel rewrites its file: one of its own
            tls = self._tls_files() if self.tls else []
            conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.folder}\n"
                            + "".join(f"{tls[i]} {tls[i + 1]}\n" for i in range(0, len(tls), 2))
                            + f"sentinel monitor {name} 127.0.0.1 {primary} 1\n"
                            f"sentinel down-after-milliseconds {name} 1000\n"
                            f"sentinel failover-timeout {name} 10000\n")
            return [binary, str(conf), "--sentinel"]
        command = [binary, "--bind", "127.0.0.1", "--dir", str(self.folder), "--appendonly", "yes",
                   "--appendfsync", "always", "--save", "", "--daemonize", "no"]
        if not self.tls:
            return [*command, "--port", str(self.port), *self.args]
        tls = self._tls_files()
        return [*command, "--port", "0", "--tls-port", str(self.port), *(f"--{o}" if i % 2 == 0 else o
                                                                          for i, o in enumerate(tls)), *self.args]

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until it answers. A first start whose port
        was taken meanwhile (free_port() only found it free) moves to another port."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        for attempt in range(3):
            log_path = self.folder / "redis.log"
            seen = log_path.stat().st_size if log_path.exists() else 0
            with log_path.open("ab") as log:
                self.proc = subprocess.Popen(self._command(binary), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
            client = self.client()

            def ready(client: redis.Redis = client) -> bool:
                try:  # ours answering, not a server of another test that holds the port
                    return bool(self.proc is not None and client.info("server")["process_id"] == self.proc.pid)
                except redis.RedisError:
                    return self.proc is not None and self.proc.poll() is not None  # exited: stop waiting

            wait_for(ready, 15.0, f"redis-server on port {self.port}")
            client.close()
            if self.proc.poll() is None:
                self.started = True
                return
            said = log_path.read_bytes()[seen:].decode(errors="replace")
            if self.started or attempt == 2 or "Address already in use" not in said:
                raise AssertionError(f"redis-server on port {self.port} exited:\n{said[-2000:]}")
            self.port = free_port()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def need_redis_server() -> None:
    """Skip without a ``redis-server`` binary to start, or fail when ``CI`` is set."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (CI is set: a missing service fails the test)")
        pytest.skip("redis-server is not installed")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    need_redis_server()
    server = RedisServer(tmp_path / "redis")
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
def broker() -> Iterator[RedisBroker]:
    """An open broker under a prefix of its own on the test Redis, dropped afterwards."""
    require_service(REDIS_URL, "Redis")
    made = RedisBroker(unique_url(REDIS_URL)[0])
    made.open()
    try:
        yield made
    finally:
        made.drop()
        made.close()


def message(queue: str = "default", **fields: Any) -> Message:
    """A no-op message with a fresh id, for the broker-level tests."""
    return Message(id=str(uuid_utils.uuid7()), task="t.noop", queue=queue, payload=b"{}", created_at=time.time(),
                   **fields)
