"""Interleaved A/B runs of ``python -m bench``: this checkout against an earlier commit.

``python -m bench.ab --base REV --url URL [--reps 5] [--phases drain] [-- bench options ...]``
checks REV out into a temporary worktree (``git worktree add``), compiles it, and runs the bench
alternately with Conveyor imported from REV (``PYTHONPATH=<worktree>/src``: the worker inherits it)
and from this checkout: A B A B ..., so both see the same machine. The bench harness itself is this
checkout's in both runs. Prints one JSON line per run and, at the end, the median of each figure
for A (base) and B (this checkout) and the ratio B/A.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {
    "drain": ("jobs_per_s", "steady_jobs_per_s", "cpu_s_per_1000_jobs"),
    "enqueue": ("jobs_per_s",),
    "bulk": ("jobs_per_s",),
    "latency": ("p50_ms", "p99_ms"),
}


def _figures(result: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for phase, names in FIGURES.items():
        data = result.get("results", {}).get(phase)
        if not isinstance(data, dict):
            continue
        for name in names:
            value = data.get(name)
            if isinstance(value, (int, float)):
                out[f"{phase}.{name}"] = float(value)
    return out


def _run(url: str, phases: str, extra: list[str], pythonpath: str | None) -> dict[str, float]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    try:
        subprocess.run([sys.executable, "-m", "bench", "--url", url, "--phases", phases, "--out", out, *extra],
                       cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        return _figures(json.loads(Path(out).read_text()))
    finally:
        os.unlink(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the commit to compare against (A)")
    parser.add_argument("--url", required=True)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--phases", default="drain")
    parser.add_argument("rest", nargs="*", help="options passed to python -m bench (after --)")
    a = parser.parse_args(argv)
    worktree = tempfile.mkdtemp(prefix="conveyor-ab-")
    subprocess.run(["git", "worktree", "add", "--detach", "-f", worktree, a.base], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        subprocess.run([sys.executable, "-m", "compileall", "-q", f"{worktree}/src"], check=True,
                       stdout=subprocess.DEVNULL)
        runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        for rep in range(a.reps):
            for side, path in (("A", f"{worktree}/src"), ("B", None)):
                figures = _run(a.url, a.phases, a.rest, path)
                runs[side].append(figures)
                print(json.dumps({"rep": rep, "side": side, **figures}), flush=True)
        names = sorted({k for r in runs["A"] + runs["B"] for k in r})
        summary = {}
        for name in names:
            med = {s: statistics.median([r[name] for r in runs[s] if name in r] or [float("nan")]) for s in "AB"}
            summary[name] = {"A": round(med["A"], 3), "B": round(med["B"], 3),
                             "B/A": round(med["B"] / med["A"], 3) if med["A"] else None}
        print(json.dumps({"base": a.base, "url": a.url, "reps": a.reps, "median": summary}, indent=2))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", worktree], cwd=ROOT, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
