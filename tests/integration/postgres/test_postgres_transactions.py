"""Transactions shared with the application, on PostgreSQL and SQLite, against the real server.

``enqueue(connection=...)``: the job exists if, and only if, the caller's transaction commits, and
workers are woken at the commit (psycopg 3, SQLAlchemy Session and Connection, Django, sqlite3).
``current_job().transaction()``: a task's effect and its success commit together.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import uuid_utils

from conveyor import Conveyor
from conveyor.brokers.memory import MemoryBroker
from conveyor.brokers.postgres import PostgresBroker
from conveyor.errors import BrokerError, ConfigError
from conveyor.testing import require_service, wait_for

POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parents[3]

TASKS = '''\
import os
from conveyor import Conveyor, current_job

app = Conveyor()  # CONVEYOR_URL


@app.task(name="ping")
def ping(n: int) -> int:
    return n


@app.task(name="effect", retries=3, backoff=0.05)
def effect(n: int, fail_inside: bool = False, fail_after: bool = False) -> int:
    job = current_job()
    with job.transaction() as conn:
        conn.execute("INSERT INTO effects (n, attempt) VALUES ({p}, {p})", (n, job.attempt))
        if fail_inside and job.attempt == 1:
            raise RuntimeError("fails inside the transaction: rolled back, retried")
    if fail_after:
        raise RuntimeError("fails after the commit: the job has succeeded all the same")
    return n
'''


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A migrated schema of its own on the real server, dropped at teardown."""
    require_service(POSTGRES_URL, "PostgreSQL")
    url = f"{POSTGRES_URL}?schema=tx_{uuid_utils.uuid7().hex[-16:]}"
    store = PostgresBroker(url)
    store.migrate()
    yield url
    store.drop()


def _app(url: str) -> Conveyor:
    app = Conveyor(url)

    @app.task(name="ping")
    def ping(n: int) -> int:
        return n

    return app


def _libpq(url: str) -> str:
    return url.split("?")[0]


# -- enqueue inside the caller's transaction ---------------------------------------------------
def test_psycopg_commit_enqueues_and_rollback_does_not(pg_url: str) -> None:
    app = _app(pg_url)
    ping = app.tasks["ping"]
    with psycopg.connect(_libpq(pg_url)) as conn:  # not autocommit: a transaction is open
        kept = ping.options(connection=conn).enqueue(1)
        by_name = app.enqueue("ping", args=[2], connection=conn)
        with pytest.raises(Exception):  # noqa: B017 - JobNotFound: not committed
            app.get_job(kept.id)
        conn.commit()
        dropped = ping.options(connection=conn).enqueue_many([(3,), (4,)])
        conn.rollback()
    assert app.get_job(kept.id).status == "queued"
    assert app.get_job(by_name.id).status == "queued"
    for job in dropped:
        with pytest.raises(Exception):  # noqa: B017 - JobNotFound
            app.get_job(job.id)
    app.close()


def test_workers_are_woken_at_commit_once_per_queue_and_never_before(pg_url: str) -> None:
    app = _app(pg_url)
    ping = app.tasks["ping"]
    store = app.broker
    assert isinstance(store, PostgresBroker)
    with psycopg.connect(_libpq(pg_url), autocommit=True) as listener:
        listener.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(store.channel)))
        with psycopg.connect(_libpq(pg_url)) as conn:
            ping.options(connection=conn).enqueue_many([(i,) for i in range(50)])
            ping.options(connection=conn, queue="other").enqueue(0)
            ping.options(connection=conn).enqueue(99)  # a third statement, same queue
            assert list(listener.notifies(timeout=0.3)) == []  # nothing before the commit
            conn.commit()
        got = sorted(n.payload for n in listener.notifies(timeout=0.5))
    assert got == ["default", "other"]  # one per queue per transaction, not one per row
    app.close()


def test_sqlalchemy_session_and_connection(pg_url: str) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from sqlalchemy.orm import Session

    app = _app(pg_url)
    ping = app.tasks["ping"]
    engine = sqlalchemy.create_engine(_libpq(pg_url).replace("postgresql://", "postgresql+psycopg://"))
    try:
        with Session(engine) as session:
            kept = ping.options(connection=session).enqueue(1)
            session.commit()
            dropped = ping.options(connection=session).enqueue(2)
            session.rollback()
        with engine.connect() as connection:
            by_conn = app.enqueue("ping", args=[3], connection=connection)
            connection.commit()
        with engine.begin() as connection:
            in_begin = ping.options(connection=connection).enqueue(4)
    finally:
        engine.dispose()
    assert [app.get_job(j.id).status for j in (kept, by_conn, in_begin)] == ["queued"] * 3
    with pytest.raises(Exception):  # noqa: B017 - JobNotFound
        app.get_job(dropped.id)
    app.close()


def test_django_connection_in_atomic_blocks(pg_url: str, tmp_path: Path) -> None:
    """Django's ``django.db.connection`` inside ``transaction.atomic()`` (in a process of its own:
    Django's settings are global)."""
    pytest.importorskip("django")
    script = textwrap.dedent(f'''
        import django
        from django.conf import settings
        settings.configure(DATABASES={{"default": {{"ENGINE": "django.db.backends.postgresql",
            "NAME": "test", "HOST": "127.0.0.1", "PORT": "5432", "USER": "{os.environ.get("USER", "root")}"}}}})
        django.setup()
        from django.db import connection, transaction
        from conveyor import Conveyor
        app = Conveyor({pg_url!r})
        @app.task(name="ping")
        def ping(n: int) -> int:
            return n
        with transaction.atomic():
            kept = ping.options(connection=connection).enqueue(1)
        try:
            with transaction.atomic():
                dropped = ping.options(connection=connection).enqueue(2)
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        print(kept.id, dropped.id)
    ''')
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "USER": os.environ.get("USER", "root")})
    assert out.returncode == 0, out.stderr
    kept_id, dropped_id = out.stdout.split()
    app = _app(pg_url)
    assert app.get_job(kept_id).status == "queued"
    with pytest.raises(Exception):  # noqa: B017 - JobNotFound
        app.get_job(dropped_id)
    app.close()


def test_a_connection_to_another_database_is_refused_clearly(pg_url: str) -> None:
    app = _app(pg_url)
    other = _app(f"{POSTGRES_URL}?schema=nowhere_{uuid_utils.uuid7().hex[-8:]}")
    with psycopg.connect(_libpq(pg_url)) as conn, pytest.raises(BrokerError, match="no Conveyor tables"):
        other.tasks["ping"].options(connection=conn).enqueue(1)
    app.close()


def test_stores_that_are_not_a_database_name_the_ones_that_are() -> None:
    app = Conveyor("memory://")

    @app.task
    def ping() -> None: ...

    with pytest.raises(ConfigError, match=r"postgresql:// or sqlite://"):
        ping.options(connection=object()).enqueue()
    with pytest.raises(ConfigError, match=r"postgresql:// or sqlite://"):
        MemoryBroker().job_transaction("id", 1)


# -- SQLite ------------------------------------------------------------------------------------
def test_sqlite_connection_to_the_store_file(tmp_path: Path) -> None:
    app = _app(f"sqlite:///{tmp_path}/c.db")
    app.open()
    ping = app.tasks["ping"]
    conn = sqlite3.connect(tmp_path / "c.db")
    kept = ping.options(connection=conn).enqueue(1)
    conn.commit()
    dropped = ping.options(connection=conn).enqueue(2)
    conn.rollback()
    assert app.get_job(kept.id).status == "queued"
    with pytest.raises(Exception):  # noqa: B017 - JobNotFound
        app.get_job(dropped.id)
    with pytest.raises(ConfigError, match="not to the store's file"):
        ping.options(connection=sqlite3.connect(tmp_path / "other.db")).enqueue(3)
    conn.close()
    app.close()


# -- current_job().transaction() in a real worker -----------------------------------------------
def _project(tmp_path: Path, url: str, placeholder: str) -> dict[str, str]:
    (tmp_path / "txtasks.py").write_text(TASKS.replace("{p}", placeholder))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(CONVEYOR_URL=url, PYTHONPATH=str(tmp_path), PYTHONUNBUFFERED="1")
    return env


def _worker(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with (tmp_path / "worker.err").open("wb") as err:
        return subprocess.Popen([sys.executable, "-m", "conveyor.cli", "worker", "txtasks:app", "-c", "2",
                                 "--lease", "2"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["postgres", "sqlite"])
def test_the_effect_and_the_success_commit_together(store: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    if store == "postgres":
        url = request.getfixturevalue("pg_url")
        with psycopg.connect(_libpq(url), autocommit=True) as conn:
            schema = url.split("schema=")[1]
            conn.execute(f'CREATE TABLE "{schema}".effects (n int, attempt int)')
        env = _project(tmp_path, url, "%s")
        (tmp_path / "txtasks.py").write_text((tmp_path / "txtasks.py").read_text().replace(
            "INSERT INTO effects", f'INSERT INTO {schema}.effects'))
    else:
        url = f"sqlite:///{tmp_path}/c.db"
        env = _project(tmp_path, url, "?")
        Conveyor(url).open()
        with sqlite3.connect(tmp_path / "c.db") as conn:
            conn.execute("CREATE TABLE effects (n int, attempt int)")
    with monkeypatch.context() as m:
        m.setenv("CONVEYOR_URL", url)
        spec = importlib.util.spec_from_file_location(f"txtasks_{store}", tmp_path / "txtasks.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    app: Conveyor = module.app
    plain = module.effect.enqueue(1)
    inside = module.effect.enqueue(2, fail_inside=True)
    after = module.effect.enqueue(3, fail_after=True)
    worker = _worker(tmp_path, env)
    try:
        for job in (plain, inside, after):
            wait_for(lambda job=job: app.get_job(job.id).status == "succeeded" or None, 30, f"job {job.id} succeeded")
    finally:
        os.killpg(worker.pid, 9)
        worker.wait(10)
    records = {j.id: app.get_job(j.id) for j in (plain, inside, after)}
    assert records[inside.id].attempts == 2  # the first attempt rolled back and was retried
    assert records[after.id].attempts == 1  # failing after the commit does not run it again
    if store == "postgres":
        with psycopg.connect(_libpq(url)) as conn:
            rows = conn.execute(f'SELECT n, attempt FROM "{schema}".effects ORDER BY n').fetchall()
    else:
        with sqlite3.connect(tmp_path / "c.db") as conn:
            rows = conn.execute("SELECT n, attempt FROM effects ORDER BY n").fetchall()
    assert rows == [(1, 1), (2, 2), (3, 1)]  # each effect exactly once
    app.close()
