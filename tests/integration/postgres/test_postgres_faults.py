"""Faults of the PostgreSQL store with real ``conveyor worker`` processes on the real server (issue
#12): random commits and rollbacks of transactional enqueues, kill -9 of pool processes under
jobs that commit their effect with their success, every Conveyor connection terminated mid-run,
and a schema that is missing or old. Each test has a schema of its own, dropped at teardown.
(The concurrent claimers are in ``test_postgres_claimers.py``, the server stopped and started
under load on a private cluster in ``test_postgres_server_restart.py``.)"""

from __future__ import annotations

import random
import re
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from pg_support import CONVEYOR, POSTGRES_URL, Project, require_postgres

from conveyor.brokers.postgres import PostgresBroker
from conveyor.brokers.postgres.schema import CURRENT
from conveyor.testing import wait_for

pytestmark = pytest.mark.slow


def test_rolled_back_enqueues_never_run_and_committed_ones_always_do(project: Project) -> None:
    worker = project.worker("-c", "2", "--lease", "2")
    project.wait_consumers(worker, 2)
    effect = project.app.tasks["effect"]
    rng = random.Random(12)
    committed: list[str] = []
    rolled_back: list[str] = []
    with psycopg.connect(project.admin_url) as conn:  # not autocommit: every enqueue is in a transaction
        for n in range(1000):
            commit = rng.random() < 0.5
            with conn.transaction(force_rollback=not commit):
                conn.execute(f"INSERT INTO {project.quoted}.orders (n) VALUES (%s)", (n,))
                if n % 10 == 0:
                    job = project.app.enqueue("effect", args=[n], connection=conn)
                else:
                    job = effect.options(connection=conn).enqueue(n)
            (committed if commit else rolled_back).append(job.id)
    project.wait_succeeded(committed, 90.0)
    time.sleep(1.0)  # were a rolled-back job to run, it would have had time to
    effects = project.sql(f"SELECT job_id, count(*) FROM {project.quoted}.effects GROUP BY job_id")
    assert dict(effects) == dict.fromkeys(committed, 1), "each committed job's effect, once; none of the others"
    orders = project.sql(f"SELECT count(*) FROM {project.quoted}.orders")[0][0]
    assert orders == len(committed)
    assert project.app.broker.get_many(rolled_back).count(None) == len(rolled_back)
    assert project.app.broker.counts() == {"default": {"succeeded": len(committed)}}
    assert 400 < len(committed) < 600
    assert "Traceback" not in worker.stderr()


def test_a_counter_bumped_in_the_job_s_transaction_ends_exact_under_kill_9(project: Project) -> None:
    # Four members, each killed in turn (the longest-lived first): a member that crashes again and
    # again is restarted with a growing back-off, so the kills are spread over all of them.
    worker = project.worker("-c", "4", "--lease", "1", "--prefetch", "4")
    project.wait_consumers(worker, 4)
    count = project.app.tasks["count"]
    job_ids = [job.id for job in count.enqueue_many([(0.004,)] * 2000)]
    started = time.monotonic()
    kills = 0
    next_kill = time.monotonic() + 1.0
    while project.app.broker.counts().get("default", {}).get("succeeded", 0) < len(job_ids):
        assert worker.alive(), worker.stderr()[-3000:]
        if time.monotonic() >= next_kill:
            next_kill += 1.0
            children = worker.children()
            if len(children) >= 2:  # the drain never stops altogether
                min(children, key=lambda c: c.create_time()).kill()
                kills += 1
        assert kills < 120, f"not done after {kills} kills: {project.states(job_ids)}"
        time.sleep(0.1)
    assert kills >= 4, "the jobs finished before the pool processes could be killed"
    assert project.sql(f"SELECT n FROM {project.quoted}.counter") == [(2000,)]
    assert project.states(job_ids) == {"succeeded": 2000}
    records = [r for r in project.app.broker.get_many(job_ids) if r is not None]
    rerun = sum(1 for r in records if r.attempts > 1)
    # Killed after its commit: the run was lost, yet the job succeeded at that attempt, not run again.
    after_commit = sum(1 for r in records if any(h["state"] == "lost" and h["attempt"] == r.attempts
                                                 for h in r.history))
    died = len(re.findall(r"died \(killed by signal 9\)", worker.stderr()))
    print(f"{time.monotonic() - started:.1f}s, {kills} SIGKILLs ({died} seen by the supervisor); "
          f"{rerun} job(s) ran more than once, {after_commit} killed after their commit; the counter is exact")
    assert died == kills
    assert worker.alive()


def _terminate(project: Project) -> int:
    """pg_terminate_backend() of every connection of the project's processes (found by the
    application_name its URL gives); how many there were."""
    rows = project.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE application_name = %s AND pid <> pg_backend_pid()", (project.schema,))
    return len(rows)


def _said(worker_log: str) -> list[str]:
    """The worker's lines about lost connections, and any psycopg wrote."""
    return [line for line in worker_log.splitlines()
            if "lost the connection(s) to PostgreSQL" in line or "psycopg" in line]


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_every_conveyor_connection_terminated_mid_run_loses_nothing(project: Project, pool: str) -> None:
    worker = project.worker("-P", pool, "-c", "2", "--lease", "2")
    project.wait_consumers(worker, 2)
    members = sorted(c.pid for c in worker.children())
    work = project.app.tasks["work"]
    first = [job.id for job in work.enqueue_many([(i, 0.01) for i in range(600)])]
    wait_for(lambda: len(project.ledger()) >= 200, 30.0, "100 jobs to run")
    terminated = _terminate(project)
    # Every process lost connections: the supervisor's, each member's (pool + LISTEN), this one's.
    assert terminated >= (3 if pool == "thread" else 4)
    second = [job.id for job in work.enqueue_many([(i, 0.01) for i in range(300)])]  # this process reconnects
    project.wait_succeeded(first + second, 60.0)
    processes = 1 if pool == "thread" else 3
    log = worker.stderr()
    said = _said(log)
    assert len(said) == processes, said  # one line per process (the supervisor, each member)
    assert len({re.search(r"\[(\d+)\]", line)[1] for line in said}) == processes  # type: ignore[index]
    others = [line for line in log.splitlines() if line not in said and " INFO " not in line]
    assert others == []  # no traceback, no failed fetch, ack or heartbeat
    assert {r.attempts for r in project.app.broker.get_many(first + second) if r} == {1}  # none ran twice
    assert sorted(c.pid for c in worker.children()) == members  # no member died


def test_listening_connections_terminated_while_idle_are_back_at_once(project: Project) -> None:
    worker = project.worker("-c", "1", "--lease", "2")
    project.wait_consumers(worker, 1)
    member = [c.pid for c in worker.children()]
    job = project.app.enqueue("work", args=[1])
    project.wait_succeeded([job.id], 10.0)
    time.sleep(0.5)  # idle: the member waits on its LISTEN connection
    assert _terminate(project) >= 3
    sent = time.monotonic()
    job = project.app.enqueue("work", args=[2])
    project.wait_succeeded([job.id], 10.0)
    assert time.monotonic() - sent < 2.0  # woken by its new LISTEN connection, not the 5 s poll
    # The supervisor and the member: one line each (the supervisor's at its next maintenance).
    said = wait_for(lambda: len(lines := _said(worker.stderr())) >= 2 and lines, 10.0, "both to say it")
    time.sleep(0.5)
    assert _said(worker.stderr()) == said
    assert [line for line in worker.stderr().splitlines() if line not in said and " INFO " not in line] == []
    assert [c.pid for c in worker.children()] == member


def test_a_running_job_s_transaction_begins_on_a_new_connection_after_all_were_terminated(
        project: Project) -> None:
    worker = project.worker("-c", "1", "--lease", "30")
    project.wait_consumers(worker, 1)
    job = project.app.enqueue("gated", args=["go"])
    wait_for(lambda: project.record(job.id).started_at, 10.0, "the job to start")
    assert _terminate(project) >= 3
    (project.folder / "go").touch()  # the job's transaction() now begins, on a pooled connection lost
    project.wait_succeeded([job.id], 15.0)
    assert project.record(job.id).attempts == 1  # its transaction began on a new connection: no retry
    assert project.sql(f"SELECT n FROM {project.quoted}.counter") == [(1,)]
    said = _said(worker.stderr())
    assert 1 <= len(said) <= 2, said
    assert [line for line in worker.stderr().splitlines() if line not in said and " INFO " not in line] == []


def test_connections_say_conveyor_in_pg_stat_activity(project: Project) -> None:
    store = PostgresBroker(project.url.replace(f"&application_name={project.schema}", ""))
    try:
        store.open()
        assert store._run(lambda conn: conn.execute("SHOW application_name").fetchone()) == ("conveyor",)
    finally:
        store.close()


def _refusal(project: Project) -> str:
    """Start a worker that must refuse to run; its one line of output."""
    worker = project.worker("-c", "1")
    code = worker.wait_exit(30.0)
    said = (worker.stderr() + worker.stdout_path.read_text()).strip()
    print(said)
    assert code != 0, said
    assert "Traceback" not in said
    assert len(said.splitlines()) == 1, said
    return said


def test_a_worker_refuses_a_schema_never_migrated_with_one_line(tmp_path: Path) -> None:
    require_postgres()
    project = Project(tmp_path, POSTGRES_URL)  # not migrated: the schema does not exist
    try:
        said = _refusal(project)
        assert "run `conveyor migrate APP`" in said and project.schema in said
    finally:
        project.cleanup()


def test_a_worker_refuses_an_older_or_newer_schema_with_one_line(project: Project) -> None:
    settings = f"{project.quoted}.conveyor_settings"
    project.sql(f"UPDATE {settings} SET value = %s WHERE name = 'schema_version'", (str(CURRENT - 1),))
    assert "run `conveyor migrate APP`" in _refusal(project)
    project.sql(f"UPDATE {settings} SET value = %s WHERE name = 'schema_version'", (str(CURRENT + 1),))
    assert "upgrade Conveyor" in _refusal(project)


def test_two_migrations_at_once_apply_each_step_once(tmp_path: Path) -> None:
    require_postgres()
    project = Project(tmp_path, POSTGRES_URL)
    try:
        # Hold the migration's advisory lock until both commands wait for it: then they run at once.
        with psycopg.connect(project.admin_url) as holder:
            holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                           (f"conveyor migrate {project.schema}",))
            runs = [subprocess.Popen([*CONVEYOR, "migrate", "tasks:app"], cwd=project.folder, env=project.environ(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
            waiting = ("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                       "WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name = %s")
            wait_for(lambda: project.sql(waiting, (project.schema,))[0][0] == 2, 30.0, "both migrations to wait")
        outputs = [run.communicate(timeout=60) for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs
        said = [out.strip() for out, _ in outputs]
        migrated = [line for line in said if line.endswith(f"migrated from version 0 to {CURRENT}")]
        up_to_date = [line for line in said if line.endswith(f"are up to date (version {CURRENT})")]
        assert (len(migrated), len(up_to_date)) == (1, 1), said  # the second one waited, then had nothing to do
        version = project.sql(f"SELECT value FROM {project.quoted}.conveyor_settings WHERE name = 'schema_version'")
        assert version == [(str(CURRENT),)]
        worker = project.worker("-c", "1")
        project.wait_consumers(worker, 1)
    finally:
        project.cleanup()
