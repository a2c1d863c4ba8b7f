"""The machine the benchmark runs on: how busy it is and how fast its CPU is right now (other
processes and a VM's neighbours make figures noisy, so each phase records :class:`CpuWindow`'s
``other_busy_pct`` and a :func:`calibrate` loop timed before and after it), what it is (CPU, memory,
OS, Python, library versions, the database's filesystem) and which commit of ``src/`` it measures.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sqlite3
import subprocess
import time
from typing import Any

import psutil

from .common import ROOT, log
from .stores import sqlite_path


def _cpu_busy() -> tuple[float, float]:
    t = psutil.cpu_times()
    busy = sum(getattr(t, f) for f in ("user", "nice", "system", "irq", "softirq") if hasattr(t, f))
    return busy, getattr(t, "steal", 0.0)


class CpuWindow:
    """The machine's CPU use over a phase, and how much of it was not ours (other processes on a
    shared machine make figures noisy: ``other_busy_pct`` says how noisy)."""

    def __init__(self) -> None:
        self.busy0, self.steal0 = _cpu_busy()
        self.wall0 = time.perf_counter()
        self.own0 = time.process_time()

    def result(self, others_cpu_s: float) -> dict[str, Any]:
        busy1, steal1 = _cpu_busy()
        wall = time.perf_counter() - self.wall0
        capacity = wall * (os.cpu_count() or 1)
        own = others_cpu_s + time.process_time() - self.own0
        busy = busy1 - self.busy0
        return {"wall_s": wall, "machine_busy_pct": 100 * busy / capacity,
                "ours_pct": 100 * own / capacity, "other_busy_pct": max(0.0, 100 * (busy - own) / capacity),
                "steal_pct": 100 * (steal1 - self.steal0) / capacity}


def busy_pct(seconds: float) -> float:
    b0, _ = _cpu_busy()
    t0 = time.perf_counter()
    time.sleep(seconds)
    b1, _ = _cpu_busy()
    return 100 * (b1 - b0) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))


def calibrate() -> float:
    """Milliseconds for a fixed pure-Python loop (best of 5): the CPU speed this phase got. On a
    shared or virtual machine it moves with the neighbours even when no process here is busy."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i * i
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def wait_quiet(max_wait: float, threshold: float) -> float:
    """Wait (up to ``max_wait`` s) until the machine is below ``threshold`` % busy for one second;
    returns the last reading."""
    deadline = time.monotonic() + max_wait
    said = False
    while True:
        pct = busy_pct(1.0)
        if pct < threshold or time.monotonic() >= deadline:
            if pct >= threshold:
                log(f"machine still {pct:.0f}% busy after waiting {max_wait:.0f}s: measuring anyway")
            return pct
        if not said:
            log(f"machine {pct:.0f}% busy (other processes): waiting for < {threshold:.0f}%")
            said = True


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return p.stdout.strip()

    import hashlib

    diff = git("diff", "HEAD", "--", "src")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "src_diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:10] if diff else None}


def machine_info(url: str) -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        cpu_model = m.group(1).strip() if m else None
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
    }
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["conveyor"] = version("conveyor")
        for dist in ("orjson", "pydantic", "psutil"):
            info[dist] = version(dist)
    if url.startswith("sqlite:"):
        path, _ = sqlite_path(url)
        parent = os.path.dirname(path)
        best = None
        for part in psutil.disk_partitions(all=True):
            if (parent + "/").startswith(part.mountpoint.rstrip("/") + "/") and (
                    best is None or len(part.mountpoint) > len(best.mountpoint)):
                best = part
        info["db_filesystem"] = f"{best.fstype} on {best.mountpoint}" if best else None
    return info
