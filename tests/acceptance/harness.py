"""The acceptance harness: a throw-away project folder with a tasks module, the real ``conveyor``
command line run as subprocesses against it, and polling helpers with deadlines.

A :class:`Project` is ``tasks.py`` (the module below) and ``t.db`` in a temporary folder.
``project.worker("-c", "2")`` starts ``conveyor worker tasks:app`` in its own process group and
waits until its consumers report a heartbeat; :meth:`Project.cleanup` SIGKILLs every group it
started. ``project.app`` is the same app loaded in the test process, to enqueue jobs and read them.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conveyor import Conveyor
from conveyor.brokers import JobRecord
from conveyor.testing import wait_for

TASKS_MODULE = '''\
"""Tasks of the acceptance tests (written by tests/acceptance/conftest.py)."""

import asyncio
import os
import time
from pathlib import Path

from conveyor import Conveyor, current_job

HERE = Path(__file__).resolve().parent
app = Conveyor()  # URL from CONVEYOR_URL


def note(name, text):
    """Append one line to a file in one write(2) with O_APPEND: lines from processes never interleave."""
    fd = os.open(HERE / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\\n").encode())
    finally:
        os.close(fd)


@app.task(name="add")
def add(a: int, b: int) -> int:
    return a + b


@app.task(name="boom", retries=2, backoff=0.05)
def boom() -> None:
    note("boom.log", f"{current_job().attempt} {os.getpid()}")
    raise ValueError("boom on purpose")


@app.task(name="fail_fast", retries=0)
def fail_fast(reason: str = "no") -> None:
    raise RuntimeError(reason)


@app.task(name="ledger")
def ledger(n: int) -> int:
    time.sleep(0.01)
    note("ledger.log", current_job().id)
    return n


@app.task(name="crash_once")
def crash_once() -> int:
    job = current_job()
    note("crash_once.log", f"{job.attempt} {os.getpid()}")
    if job.attempt == 1:
        time.sleep(60)  # the test SIGKILLs this process meanwhile
    return os.getpid()


@app.task(name="crash_now", retries=0)
def crash_now() -> None:
    note("crash_now.log", str(os.getpid()))
    os.kill(os.getpid(), 9)  # dies mid-job, as a segfault or the OOM killer would


@app.task(name="hang", timeout=0.5, retries=0)
def hang() -> None:
    note("hang.log", str(os.getpid()))
    while True:  # deaf to the soft TimeoutError: only a hard kill ends it
        try:
            time.sleep(0.05)
        except TimeoutError:
            note("hang.log", "soft timeout ignored")


@app.task(name="soft", timeout=0.3, retries=0)
def soft(seconds: float = 5.0) -> None:
    note("soft.log", str(os.getpid()))
    try:
        time.sleep(seconds)
    except TimeoutError:
        note("soft.log", "TimeoutError")
        raise


@app.task(name="nap")
def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@app.task(name="unencodable", retries=0)
def unencodable() -> object:
    return object()  # a result JSON cannot store


@app.task(name="stamped_nap")
def stamped_nap(seconds: float) -> float:
    started = time.time()
    time.sleep(seconds)
    return started


@app.task(name="whoami")
def whoami() -> int:
    return os.getpid()


@app.task(name="async_nap")
async def async_nap(seconds: float) -> float:
    started = time.time()
    await asyncio.sleep(seconds)
    return started


@app.task(name="until_cancelled")
def until_cancelled(limit: float = 30.0) -> str:
    deadline = time.monotonic() + limit
    while not current_job().cancelled:
        if time.monotonic() > deadline:
            return "never cancelled"
        time.sleep(0.02)
    note("cancel.log", "saw cancellation")
    return "stopped"
'''

_BIN = Path(sys.executable).with_name("conveyor")
CONVEYOR = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "conveyor.cli"]
_counter = itertools.count()


class Worker:
    """A running ``conveyor worker`` process (the supervisor) and its output files."""

    def __init__(self, proc: subprocess.Popen[bytes], stdout: Path, stderr: Path) -> None:
        self.proc = proc
        self.stdout_path = stdout
        self.stderr_path = stderr

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def children(self) -> list[psutil.Process]:
        """The live pool processes (direct children of the supervisor)."""
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        live = []
        for kid in kids:
            try:
                if kid.status() != psutil.STATUS_ZOMBIE:
                    live.append(kid)
            except psutil.NoSuchProcess:
                pass
        return live

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """Wait until ``text`` appears on the worker's stderr."""
        def seen() -> str | None:
            out = self.stderr()
            if text in out:
                return out
            assert self.alive(), f"worker exited ({self.proc.returncode}) before logging {text!r}:\n{out}"
            return None

        return wait_for(seen, timeout, f"{text!r} in the worker log")

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after {timeout}s:\n{self.stderr()}") from None

    def kill_group(self) -> None:
        if self.proc.poll() is None:  # the pool processes are in its group: one signal ends them all
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


class Project:
    """A temporary folder holding ``tasks.py`` and ``t.db``, and the tools to drive it."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder = folder
        self.db = folder / "t.db"
        self.url = f"sqlite:///{self.db}"
        (folder / "tasks.py").write_text(TASKS_MODULE)
        self.workers: list[Worker] = []
        self._app: Conveyor | None = None
        self._monkeypatch = monkeypatch

    # -- the app in the test process ---------------------------------------------------------
    @property
    def app(self) -> Conveyor:
        """The tasks module's app, loaded here under a unique module name (task names are explicit)."""
        if self._app is None:
            with self._monkeypatch.context() as m:
                for key in [k for k in os.environ if k.startswith("CONVEYOR_")]:
                    m.delenv(key)
                m.setenv("CONVEYOR_URL", self.url)
                m.chdir(self.folder)
                name = f"acceptance_tasks_{next(_counter)}"
                spec = importlib.util.spec_from_file_location(name, self.folder / "tasks.py")
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            self._app = module.app
            self._app.open()
        return self._app

    def cleanup(self) -> None:
        """SIGKILL the process group of every worker started (whatever state it is in) and close."""
        for worker in self.workers:
            worker.kill_group()
            tail = worker.stderr()[-4000:]
            if tail:  # shown by pytest when the test failed
                print(f"--- stderr of worker {worker.pid} (exit {worker.proc.returncode}) ---\n{tail}")
        if self._app is not None:
            self._app.close()

    def lines(self, name: str) -> list[str]:
        """Lines a task appended to ``name`` in the project folder (none yet: empty)."""
        path = self.folder / name
        return path.read_text().splitlines() if path.exists() else []

    # -- subprocesses ------------------------------------------------------------------------
    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(CONVEYOR_URL=self.url, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        env.update(extra or {})
        return env

    def worker(self, *flags: str, env: dict[str, str] | None = None, app: str = "tasks:app") -> Worker:
        """Start ``conveyor worker APP --lease 2 FLAGS`` (give ``-c``; APP is ``tasks:app`` unless
        given) and wait until all its consumers have reported a heartbeat, i.e. they are fetching."""
        n = len(self.workers)
        out, err = self.folder / f"worker{n}.out", self.folder / f"worker{n}.err"
        with out.open("wb") as fout, err.open("wb") as ferr:
            proc = subprocess.Popen([*CONVEYOR, "worker", app, "--lease", "2", *flags],
                                    cwd=self.folder, env=self.environ(env), stdout=fout, stderr=ferr,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        worker = Worker(proc, out, err)
        self.workers.append(worker)
        expected = _members(flags)

        def up() -> bool:
            assert worker.alive(), f"worker exited with {proc.returncode}:\n{worker.stderr()}"
            mine = [w for w in self.app.broker.workers() if w.supervisor and f":{proc.pid}:" in w.supervisor]
            return len(mine) >= expected

        wait_for(up, 20.0, f"{expected} consumer(s) of worker {proc.pid} to report", interval=0.05)
        return worker

    def cli(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``conveyor ARGS`` in the project folder and return what it did."""
        return subprocess.run([*CONVEYOR, *args], cwd=self.folder, env=self.environ(env), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    # -- jobs --------------------------------------------------------------------------------
    def wait_state(self, job_id: str, *states: str, timeout: float = 15.0) -> JobRecord:
        """Wait until the job is in one of ``states``; returns its record."""
        def reached() -> JobRecord | None:
            record = self.app.broker.get(job_id)
            return record if record is not None and record.state in states else None

        try:
            return wait_for(reached, timeout, f"job {job_id} to be {'/'.join(states)}")
        except AssertionError:
            record = self.app.broker.get(job_id)
            raise AssertionError(f"job {job_id} is {record.state if record else 'gone'}, not "
                                 f"{'/'.join(states)} after {timeout}s: {record}") from None

    def counts(self) -> dict[str, int]:
        """Jobs per state over every queue."""
        total: dict[str, int] = {}
        for per_state in self.app.broker.counts().values():
            for state, n in per_state.items():
                total[state] = total.get(state, 0) + n
        return total


def _members(flags: tuple[str, ...]) -> int:
    """Consumers a worker started with ``flags`` runs (the async pool is one event loop)."""
    args = list(flags)
    pool = "process"
    concurrency = os.cpu_count() or 2  # the default of the concurrency setting
    for i, flag in enumerate(args[:-1]):
        if flag in ("--pool", "-P"):
            pool = args[i + 1]
        if flag in ("--concurrency", "-c"):
            concurrency = int(args[i + 1])
    return 1 if pool == "async" else concurrency
