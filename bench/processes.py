"""The processes the harness starts: the worker (``conveyor worker bench.tasks:app`` in its own process
group, sampled for memory and CPU, stopped with SIGTERM then SIGKILL), the producer child of each
phase (``python -m bench.producer``), and the py-spy recorders of ``--profile``. Every started worker
is in :data:`LIVE` until stopped, so :func:`stop_all` can end them when the harness exits early.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import psutil

from .common import ROOT
from .producer import RESULT_PREFIX

TASK_APP = "bench.tasks:app"
ERR_RE = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b")
LIVE: set[Worker] = set()


def stop_all() -> None:
    """Stop every worker still running (the harness registers this with ``atexit``)."""
    for w in list(LIVE):
        w.stop()


def phase_env(url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["CONVEYOR_BENCH_URL"] = url
    env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def conveyor_command() -> list[str]:
    """The ``conveyor`` script of this environment; ``CONVEYOR_BENCH_WORKER`` (a command line) replaces it
    for experiments, e.g. a wrapper that patches the broker before calling ``conveyor.cli.main``."""
    override = os.environ.get("CONVEYOR_BENCH_WORKER")
    if override:
        return shlex.split(override)
    exe = os.path.join(os.path.dirname(sys.executable), "conveyor")
    if os.path.exists(exe):
        return [exe]
    found = shutil.which("conveyor")
    if not found:
        raise SystemExit("the `conveyor` script is not installed next to this python or on PATH")
    return [found]


def read_smaps_rollup(pid: int) -> dict[str, int] | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        return None
    out = {}
    for key in ("Rss", "Pss"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if m:
            out[key.lower()] = int(m.group(1)) * 1024
    return out


class Worker:
    """``conveyor worker bench.tasks:app --concurrency C`` in its own session (process group)."""

    def __init__(self, url: str, concurrency: int, logpath: str, grace: float = 10.0) -> None:
        self.url, self.logpath, self.grace = url, logpath, grace
        self.argv = [*conveyor_command(), "worker", TASK_APP, "--concurrency", str(concurrency),
                     "--pool", "process"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.logf = open(self.logpath, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=phase_env(self.url), stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)
        LIVE.add(self)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> dict[str, Any]:
        """RSS and PSS summed over the supervisor and its children, and CPU seconds of the tree
        (live processes' own time plus the time of children they have reaped)."""
        rss = pss = cpu = 0.0
        have_pss = True
        n = 0
        for p in self.tree():
            try:
                with p.oneshot():
                    mem = p.memory_info()
                    t = p.cpu_times()
            except psutil.Error:
                continue
            n += 1
            rss += mem.rss
            cpu += t.user + t.system + t.children_user + t.children_system
            rollup = read_smaps_rollup(p.pid)
            if rollup and "pss" in rollup:
                pss += rollup["pss"]
            else:
                have_pss = False
        return {"procs": n, "rss_mb": rss / 1e6, "pss_mb": pss / 1e6 if have_pss and n else None, "cpu_s": cpu}

    def stop(self) -> dict[str, Any]:
        """SIGTERM the process group, wait ``grace``, then SIGKILL the group and any straggler."""
        if self.proc is None or self not in LIVE:
            return {}
        LIVE.discard(self)
        t0 = time.perf_counter()
        forced = False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            forced = True
        # Whatever is left of the group (a child that outlived the supervisor) gets SIGKILL.
        try:
            os.killpg(self.proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            pass
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            forced = True
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.logf.close()
        return {"exit_code": self.proc.returncode, "stop_s": time.perf_counter() - t0, "forced_kill": forced}

    def log_errors(self) -> tuple[int, list[str]]:
        with open(self.logpath, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        hits = [line for line in lines if ERR_RE.search(line)]
        return len(hits), hits[:5]


def producer(url: str, mode: str, *args: str, timeout: float = 900.0,
             profile: str | None = None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.producer", mode, *args]
    if profile:
        argv = [*pyspy_command(), "record", "--format", "raw", "--rate", "250", "-o", profile, "--", *argv]
    p = subprocess.run(argv, cwd=ROOT, env=phase_env(url), capture_output=True, text=True, timeout=timeout)
    lines = [line for line in p.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"producer {mode} failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return dict(json.loads(lines[-1][len(RESULT_PREFIX):]))


def pyspy_command() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "py-spy")
    found = exe if os.path.exists(exe) else shutil.which("py-spy")
    if not found:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install -e '.[bench]' (or make bench)")
    return [found]


def stop_spy(spy: subprocess.Popen[bytes] | None) -> None:
    """End a py-spy recorder (SIGINT makes it write its file)."""
    if spy is None or spy.poll() is not None:
        return
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=20)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
