"""``conveyor migrate`` and ``conveyor doctor`` on the real server, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import uuid_utils

from conveyor.brokers.postgres import PostgresBroker
from conveyor.testing import require_service

POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
APP = "from conveyor import Conveyor\napp = Conveyor()\n\n@app.task\ndef ping() -> None: ...\n"


def _run(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "adminapp.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(CONVEYOR_URL=url)
    return subprocess.run([sys.executable, "-m", "conveyor.cli", *args, "adminapp:app"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_doctor_says_what_to_run_then_migrate_then_all_is_well(tmp_path: Path) -> None:
    require_service(POSTGRES_URL, "PostgreSQL")
    url = f"{POSTGRES_URL}?schema=admin_{uuid_utils.uuid7().hex[-12:]}"
    try:
        before = _run(tmp_path, url, "doctor")
        assert before.returncode == 1, before.stderr
        assert "FAIL" in before.stdout and "conveyor migrate" in before.stdout
        assert "Traceback" not in before.stdout + before.stderr
        first, again = _run(tmp_path, url, "migrate"), _run(tmp_path, url, "migrate")
        assert "migrated from version 0" in first.stdout and "up to date" in again.stdout
        after = _run(tmp_path, url, "doctor")
        assert after.returncode == 0, after.stdout + after.stderr
        assert "FAIL" not in after.stdout and "LISTEN/NOTIFY" in after.stdout
    finally:
        PostgresBroker(url).drop()


def test_doctor_and_migrate_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    migrated = _run(tmp_path, url, "migrate")
    assert migrated.returncode == 0 and "nothing to migrate" in migrated.stdout
    doctor = _run(tmp_path, url, "doctor")
    assert doctor.returncode == 0 and "sqlite:// store reachable" in doctor.stdout, doctor.stdout + doctor.stderr
