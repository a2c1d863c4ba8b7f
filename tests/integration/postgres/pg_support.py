"""Helpers of the PostgreSQL fault tests: a project folder with a tasks module, real ``conveyor
worker`` processes on a schema of the test's own (``?schema=``, dropped at teardown), and a
private PostgreSQL cluster (``initdb`` + ``pg_ctl`` on a free port) for the test that stops the
server. The shared server on 5432 is never stopped or restarted.

(A name of its own, not ``conftest``: ``from conftest import`` would find whichever conftest.py
pytest imported first.)
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import uuid_utils
from psycopg import sql

from acceptance.harness import CONVEYOR, Worker
from conveyor import Conveyor
from conveyor.brokers import JobRecord
from conveyor.brokers.postgres import PostgresBroker
from conveyor.testing import require_service, wait_for
from fault_ledger import kill_workers, read_ledger

POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


def _pg_bin() -> Path:
    """Where initdb and pg_ctl are: ``CONVEYOR_TEST_PG_BIN``, else Debian's newest PostgreSQL."""
    if os.environ.get("CONVEYOR_TEST_PG_BIN"):
        return Path(os.environ["CONVEYOR_TEST_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()

TASKS = '''\
import os
import time
from pathlib import Path

from conveyor import Conveyor, current_job

LEDGER = Path(__file__).resolve().parent / "ledger.log"
SCHEMA = {schema!r}  # the test's schema, quoted: the tasks' own tables live beside Conveyor's
app = Conveyor()  # CONVEYOR_URL


def ledger(kind):
    """One line per start and end of a run, in one write(2) with O_APPEND (lines never interleave)."""
    job = current_job()
    line = f"{{kind}} {{job.id}} {{job.attempt}} {{os.getpid()}} {{time.time()!r}}\\n"
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task(name="effect", retries=5, backoff=0.05)
def effect(n: int) -> int:
    """Its effect, a row, commits with its success."""
    with current_job().transaction() as conn:
        conn.execute(f"INSERT INTO {{SCHEMA}}.effects (job_id, n) VALUES (%s, %s)", (current_job().id, n))
    return n


@app.task(name="count", retries=100, backoff=0.01)
def count(seconds: float = 0.0) -> None:
    """Adds 1 to the counter, exactly once per job however often the process running it is killed."""
    time.sleep(seconds)
    with current_job().transaction() as conn:
        # The fault is the client dying, not the server: no need to wait for the WAL flush (2 busy
        # cores do about 150 fsynced commits/s of one hot row; this is about atomicity, not durability).
        conn.execute("SET LOCAL synchronous_commit TO off")
        conn.execute(f"UPDATE {{SCHEMA}}.counter SET n = n + 1")
    time.sleep(seconds)  # a kill here, after the commit, must not run the job again


@app.task(name="gated", retries=5, backoff=0.05)
def gated(gate: str) -> None:
    """Waits for the file ``gate`` beside this module, then adds 1 to the counter at once."""
    path = Path(__file__).resolve().parent / gate
    while not path.exists():
        time.sleep(0.005)
    with current_job().transaction() as conn:
        conn.execute(f"UPDATE {{SCHEMA}}.counter SET n = n + 1")


@app.task(name="work", retries=20, backoff=0.05)
def work(n: int, seconds: float = 0.0) -> int:
    ledger("start")
    time.sleep(seconds)
    ledger("end")
    return n
'''

_counter = itertools.count()


def with_options(url: str, **options: str) -> str:
    extra = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{url}{'&' if '?' in url else '?'}{extra}"


def new_schema() -> str:
    return f"faults_{uuid_utils.uuid7().hex[-16:]}"


class Project:
    """``tasks.py`` in a folder, its app loaded in this process on ``url``, workers started there.

    ``url`` names a schema of its own; :meth:`migrate` makes Conveyor's tables there, the tasks'
    tables (``effects``, ``counter``) are made beside them, and :meth:`cleanup` drops the schema."""

    def __init__(self, folder: Path, base_url: str, schema: str | None = None, **options: str) -> None:
        self.folder, self.schema = folder, schema or new_schema()
        # Every connection of the project's processes says whose it is (fault tests terminate them).
        self.url = with_options(base_url, schema=self.schema, application_name=self.schema, **options)
        self.quoted = sql.Identifier(self.schema).as_string(None)
        (folder / "tasks.py").write_text(TASKS.format(schema=self.quoted))
        self.workers: list[Worker] = []
        self.admin_url = PostgresBroker(self.url).conninfo  # what libpq gets (Conveyor's options taken out)
        self._app: Conveyor | None = None

    def migrate(self) -> Project:
        """Conveyor's tables (as ``conveyor migrate`` makes them) and the tasks' own."""
        store = PostgresBroker(self.url)
        store.migrate()
        store.close()
        self.sql(f"CREATE TABLE {self.quoted}.effects (job_id text NOT NULL, n int NOT NULL)")
        self.sql(f"CREATE TABLE {self.quoted}.counter (n int NOT NULL)")
        self.sql(f"INSERT INTO {self.quoted}.counter VALUES (0)")
        self.sql(f"CREATE TABLE {self.quoted}.orders (n int PRIMARY KEY)")
        return self

    @property
    def app(self) -> Conveyor:
        """The tasks module's app, loaded here under a unique module name (task names are explicit)."""
        if self._app is None:
            saved = {k: os.environ.pop(k) for k in [k for k in os.environ if k.startswith("CONVEYOR_")]}
            os.environ["CONVEYOR_URL"] = self.url
            try:
                spec = importlib.util.spec_from_file_location(f"pg_faults_tasks_{next(_counter)}",
                                                              self.folder / "tasks.py")
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            finally:
                os.environ.pop("CONVEYOR_URL", None)
                os.environ.update(saved)
            self._app = module.app
            self._app.open()
        return self._app

    def sql(self, query: str, params: Sequence[Any] | None = None) -> list[Any]:
        """Run one statement on a connection of the test's own (autocommit); its rows."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            cur = conn.execute(query, params)  # the tests' own text
            return cur.fetchall() if cur.description else []

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(CONVEYOR_URL=self.url, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        env.update(extra or {})
        return env

    def worker(self, *flags: str, env: dict[str, str] | None = None) -> Worker:
        """Start ``conveyor worker tasks:app FLAGS`` in its own process group (not waiting)."""
        n = len(self.workers)
        out, err = self.folder / f"worker{n}.out", self.folder / f"worker{n}.err"
        with out.open("wb") as fout, err.open("wb") as ferr:
            proc = subprocess.Popen([*CONVEYOR, "worker", "tasks:app", *flags], cwd=self.folder,
                                    env=self.environ(env), stdout=fout, stderr=ferr, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        worker = Worker(proc, out, err)
        self.workers.append(worker)
        return worker

    def wait_consumers(self, worker: Worker, n: int, timeout: float = 30.0) -> None:
        def up() -> bool:
            assert worker.alive(), f"worker exited with {worker.proc.returncode}:\n{worker.stderr()}"
            mine = [w for w in self.app.broker.workers() if w.supervisor and f":{worker.pid}:" in w.supervisor]
            return len(mine) >= n

        wait_for(up, timeout, f"{n} consumer(s) of worker {worker.pid} to report", interval=0.05)

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CONVEYOR, *args], cwd=self.folder, env=self.environ(), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def states(self, job_ids: Sequence[str]) -> dict[str, int]:
        """How many of ``job_ids`` are in each state (``missing``: no record)."""
        found: dict[str, int] = {}
        for record in self.app.broker.get_many(list(job_ids)):
            state = record.state if record is not None else "missing"
            found[state] = found.get(state, 0) + 1
        return found

    def wait_succeeded(self, job_ids: Sequence[str], timeout: float) -> None:
        def done() -> bool:
            for worker in self.workers:
                assert worker.alive(), f"worker exited with {worker.proc.returncode}:\n{worker.stderr()[-3000:]}"
            return self.states(job_ids).get("succeeded", 0) == len(job_ids)

        try:
            wait_for(done, timeout, f"{len(job_ids)} jobs to succeed", interval=0.2)
        except AssertionError:
            raise AssertionError(f"after {timeout}s: {self.states(job_ids)}") from None

    def record(self, job_id: str) -> JobRecord:
        record = self.app.broker.get(job_id)
        assert record is not None, f"job {job_id} is gone"
        return record

    def ledger(self) -> list[list[str]]:
        """``[kind, job id, attempt, pid, time]`` per start and end of a run of the ``work`` task."""
        return read_ledger(self.folder)

    def cleanup(self, drop: bool = True) -> None:
        kill_workers(self.workers, lambda worker: worker.stderr(), "stderr")
        if self._app is not None:
            self._app.close()
        if drop:
            store = PostgresBroker(self.url)
            try:
                store.drop()
            finally:
                store.close()


def require_postgres() -> None:
    require_service(POSTGRES_URL, "PostgreSQL")


StoreT = TypeVar("StoreT", bound=PostgresBroker)


@contextmanager
def migrated_store(cls: type[StoreT], prefix: str) -> Iterator[StoreT]:
    """A store of class ``cls`` on the shared server, open, in a migrated schema of its own named
    ``<prefix>_<random>``; the schema is dropped afterwards."""
    require_postgres()
    made = cls(f"{POSTGRES_URL}?schema={prefix}_{uuid_utils.uuid7().hex[-16:]}")
    made.migrate()
    made.open()
    try:
        yield made
    finally:
        made.drop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateCluster:
    """A PostgreSQL cluster of the test's own: ``initdb`` in a temporary folder, ``pg_ctl`` on a
    free port, run as the ``postgres`` user when the test runs as root (initdb refuses root)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
        self.data = self.folder / "data"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str, timeout: float = 60.0) -> None:
        argv = list(command) if self.user is None else ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
                  "-E", "UTF8", "--no-instructions")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c max_connections=60 -c shared_buffers=16MB")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except AssertionError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)


def need_private_cluster() -> None:
    """Skip without initdb/pg_ctl (or a postgres user to run them as root), or fail when CI is set."""
    missing = [name for name in ("initdb", "pg_ctl") if not (PG_BIN / name).exists()]
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing.append("a postgres user")
        if shutil.which("runuser") is None:
            missing.append("runuser")
    if missing:
        message = f"a private PostgreSQL cluster needs {', '.join(missing)} (set CONVEYOR_TEST_PG_BIN)"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: a missing service fails the test)")
        pytest.skip(message)


def wait_answers(url: str, timeout: float = 30.0) -> None:
    def answers() -> bool:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    wait_for(answers, timeout, f"PostgreSQL at {url}", interval=0.1)
