"""The runnable ``examples/zmq_*.py`` run, as a user would start them, and say what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def run(name: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_pipeline_example_runs_its_jobs() -> None:
    out = run("zmq_pipeline.py")
    assert "50 jobs ran, e.g. 'photo-0.jpg@320px'" in out
    assert "the failing job is failed" in out
    assert "'succeeded': 50" in out


def test_the_events_example_follows_completions_with_a_plain_sub_socket() -> None:
    lines = run("zmq_events.py").splitlines()
    assert sum(line.startswith("job.succeeded") for line in lines) == 4
    assert sum(line.startswith("job.failed") for line in lines) == 1
    assert any(line.startswith("job.scheduled") for line in lines)  # the retry of article 3
