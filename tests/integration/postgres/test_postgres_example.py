"""examples/postgres_shop runs as its README says: migrate, a worker from the folder, then ``python shop.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import uuid_utils

from conveyor.brokers.postgres import PostgresBroker
from conveyor.testing import require_service

POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
SHOP = Path(__file__).resolve().parents[3] / "examples" / "postgres_shop"


def test_the_postgres_shop_example_runs_as_documented(tmp_path: Path) -> None:
    require_service(POSTGRES_URL, "PostgreSQL")
    # A database of its own: the example keeps its orders in the public schema.
    database = f"shop_{uuid_utils.uuid7().hex[-12:]}"
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    shop_db = POSTGRES_URL.rsplit("/", 1)[0] + f"/{database}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(SHOP_DATABASE=shop_db, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    conveyor = [sys.executable, "-m", "conveyor.cli"]
    try:
        migrated = subprocess.run([*conveyor, "migrate", "tasks:app"], cwd=SHOP, env=env, capture_output=True,
                                  text=True, timeout=60)
        assert migrated.returncode == 0 and "migrated from version 0" in migrated.stdout, migrated.stderr
        worker = subprocess.Popen([*conveyor, "worker", "tasks:app", "-c", "2"], cwd=SHOP, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            shop = subprocess.run([sys.executable, "shop.py"], cwd=SHOP, env=env, capture_output=True, text=True,
                                  timeout=90)
            assert shop.returncode == 0, shop.stderr
            assert shop.stdout.splitlines() == [
                "receipt of order 1 sent to ann@example.com",
                "rolled-back order 2: no job",
                "receipt of order 3 sent to customer3@example.com",
            ]
        finally:
            worker.terminate()
            try:
                log = worker.communicate(timeout=60)[0].decode(errors="replace")
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                log = worker.communicate()[0].decode(errors="replace")
        assert worker.returncode == 0, log
    finally:
        PostgresBroker(f"{shop_db}?schema=jobs").close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
