"""Acceptance: the ``conveyor`` commands against a real database, and clear errors without tracebacks."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import orjson
import pytest

from conveyor.presentation import short_id
from conveyor.testing import wait_for
from harness import CONVEYOR, Project

pytestmark = pytest.mark.slow


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command failed with exit 2 and a single ``Error: ...`` line naming ``needles``."""
    assert result.returncode == 2, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_cli_commands_against_a_real_database(project: Project) -> None:
    # enqueue --json, then a worker runs it
    out = orjson.loads(ok(project.cli("enqueue", "tasks:app", "add", "[2, 3]", "--json")))
    assert out["task"] == "add" and out["status"] == "queued"
    added = out["id"]
    reason = "on purpose [/] [bold]x[/bold]"  # job data is printed as is, never read as markup
    kwargs = orjson.dumps({"reason": reason}).decode()
    failing = orjson.loads(ok(project.cli("enqueue", "tasks:app", "fail_fast", kwargs, "--json")))["id"]
    project.worker("--pool", "thread", "-c", "1")
    assert project.wait_state(added, "succeeded").state == "succeeded"
    project.wait_state(failing, "failed")

    # job ID --json
    shown = orjson.loads(ok(project.cli("job", "tasks:app", added, "--json")))
    assert (shown["id"], shown["state"], shown["result"]) == (added, "succeeded", 5)
    assert shown["payload"] == {"args": [2, 3], "kwargs": {}}
    failed = orjson.loads(ok(project.cli("job", "tasks:app", failing, "--json")))
    assert failed["error"]["type"] == "RuntimeError"
    assert reason in failed["error"]["traceback"]
    human = ok(project.cli("job", "tasks:app", failing))
    assert f"RuntimeError: {reason}" in human
    assert reason in ok(project.cli("jobs", "tasks:app", "--state", "failed", env={"COLUMNS": "250"}))

    # jobs --state failed --json
    listed = orjson.loads(ok(project.cli("jobs", "tasks:app", "--state", "failed", "--json")))
    assert [j["id"] for j in listed["jobs"]] == [failing]
    assert listed["cursor"] is None

    # retry ID: the failed job runs again (and fails again: same arguments)
    assert ok(project.cli("retry", "tasks:app", failing)).split() == [failing, "queued"]
    record = project.wait_state(failing, "failed")
    assert len(record.history) == 2
    again = project.cli("retry", "tasks:app", added)
    assert again.returncode == 2 and "only failed or cancelled" in again.stderr

    # cancel ID of a delayed job
    later = ok(project.cli("enqueue", "tasks:app", "add", "[1, 1]", "--delay", "600")).strip()
    assert project.app.get_job(later).status == "scheduled"
    assert ok(project.cli("cancel", "tasks:app", later)).split() == [later, "cancelled"]
    assert project.app.get_job(later).status == "cancelled"

    # queues --json
    queues = orjson.loads(ok(project.cli("queues", "tasks:app", "--json")))
    (default,) = [q for q in queues if q["name"] == "default"]
    assert default["counts"]["succeeded"] == 1
    assert default["counts"]["failed"] == 1
    assert default["counts"]["cancelled"] == 1
    assert default["paused"] is False

    # purge --yes deletes what waits, nothing else
    for _ in range(3):
        ok(project.cli("enqueue", "tasks:app", "add", "[1, 1]", "--delay", "600"))
    assert ok(project.cli("purge", "tasks:app", "--yes")).strip() == "deleted 3 job(s)"
    assert project.counts() == {"succeeded": 1, "failed": 1, "cancelled": 1}

    # job ID of an unknown id
    one_line_error(project.cli("job", "tasks:app", "no-such-id"), "no-such-id")


def test_cli_config_shows_where_each_setting_came_from(project: Project) -> None:
    shown = orjson.loads(ok(project.cli("config", "--json", env={"CONVEYOR_GRACE": "7"})))
    assert shown["grace"] == {"value": 7.0, "source": "env CONVEYOR_GRACE"}
    assert shown["url"] == {"value": project.url, "source": "env CONVEYOR_URL"}
    assert shown["lease"]["source"] == "default"
    secret = "redis://user:s3cret@127.0.0.1:6379/0"
    redacted = orjson.loads(ok(project.cli("config", "--json", env={"CONVEYOR_URL": secret})))
    assert "s3cret" not in redacted["url"]["value"]


@pytest.mark.parametrize(("args", "needles"), [
    (["add", "[1, 2"], ["JSON"]),
    (["add", "[1, 2]", "--kwargs", "nope"], ["JSON"]),
    (["add", '"a string"'], ["ARGS_JSON"]),
    (["add", '{"a": 1}', "--kwargs", "[2]"], ["--kwargs", "JSON object"]),
    (["nope", "[]"], ["unknown task", "'nope'"]),
    (["add", '["x", 2]'], ["invalid arguments", "'a'", "int"]),
    (["add", "[1]"], ["invalid arguments", "'b'"]),
])
def test_cli_enqueue_refuses_bad_input_with_one_clear_line(project: Project, args: list[str],
                                                           needles: list[str]) -> None:
    one_line_error(project.cli("enqueue", "tasks:app", *args), *needles)
    assert project.counts() == {}


def test_worker_refuses_a_corrupt_database_with_one_clear_line(project: Project) -> None:
    project.db.write_bytes(b"this is not an SQLite database, just garbage bytes\x00\xff" * 200)

    result = project.cli("worker", "tasks:app", "-c", "1", timeout=20)

    one_line_error(result, str(project.db))


def test_worker_refuses_a_database_in_a_missing_folder(project: Project, tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "folder" / "t.db"

    result = project.cli("worker", "tasks:app", "-c", "1", env={"CONVEYOR_URL": f"sqlite:///{path}"}, timeout=20)

    one_line_error(result, str(path))
    assert not path.parent.exists()


def test_worker_refuses_a_database_in_an_unwritable_folder(project: Project, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        folder = Path("/proc")  # not even root may create files there
    else:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
    path = folder / "conveyor-acceptance.db"

    result = project.cli("worker", "tasks:app", "-c", "1", env={"CONVEYOR_URL": f"sqlite:///{path}"}, timeout=20)

    one_line_error(result, str(path))
    assert not path.exists()


def narrow(**extra: str) -> dict[str, str]:
    """The environment of an 80-column terminal (rich reads COLUMNS even in a pipe)."""
    return {"COLUMNS": "80", "LINES": "24", **extra}


def fits_80_columns(out: str) -> str:
    widest = max((len(line) for line in out.splitlines()), default=0)
    assert widest <= 80, f"{widest} columns:\n{out}"
    return out


def test_lists_fit_80_columns_and_short_ids_name_jobs(project: Project) -> None:
    assert ok(project.cli("jobs", "tasks:app", env=narrow())).strip() == "no jobs match"
    assert ok(project.cli("jobs", "tasks:app", "--state", "failed")).strip() == "no jobs match (state failed)"
    ids = [ok(project.cli("enqueue", "tasks:app", "add", f"[{i}, 1]")).strip() for i in range(3)]
    (lease,) = project.app.broker.fetch(["default"], 1, 60, "test-consumer")  # held, not started: reserved

    listed = fits_80_columns(ok(project.cli("jobs", "tasks:app", env=narrow())))
    header = listed.splitlines()[0].split()
    assert header == ["id", "task", "queue", "state", "tries", "created", "took", "done", "error"]
    rows = {line.split()[0]: line for line in listed.splitlines()[2:]}
    assert set(rows) == {short_id(i) for i in ids}
    assert "reserved" in rows[short_id(lease.job_id)]

    queues = fits_80_columns(ok(project.cli("queues", "tasks:app", env=narrow())))
    assert queues.splitlines()[0].split() == ["queue", "queued", "scheduled", "reserved", "running", "succeeded",
                                              "failed", "cancelled"]
    default = next(line for line in queues.splitlines() if line.startswith("default"))
    assert default.split()[1:5] == ["2", "0", "1", "0"]
    assert orjson.loads(ok(project.cli("queues", "tasks:app", "--json")))[0]["reserved"] == 1

    # job, cancel and retry take the short id, or any unique start of an id
    waiting = next(i for i in ids if i != lease.job_id)
    shown = ok(project.cli("job", "tasks:app", short_id(waiting), env=narrow()))
    assert waiting in shown and "None" not in shown
    assert not any(line.split()[0] == "key" for line in shown.splitlines() if line.strip())
    assert ok(project.cli("cancel", "tasks:app", waiting[:-2])).split() == [waiting, "cancelled"]
    assert ok(project.cli("retry", "tasks:app", short_id(waiting))).split() == [waiting, "queued"]
    one_line_error(project.cli("job", "tasks:app", waiting[:8]), "ambiguous", waiting[:8])
    one_line_error(project.cli("cancel", "tasks:app", "fedcba98"), "no job", "fedcba98")


def test_job_keeps_each_traceback_line_whole(project: Project) -> None:
    reason = "the upstream service answered 503 " * 4  # a line longer than the terminal
    failing = ok(project.cli("enqueue", "tasks:app", "fail_fast", orjson.dumps([reason]).decode())).strip()
    project.worker("--pool", "thread", "-c", "1")
    project.wait_state(failing, "failed")

    shown = ok(project.cli("job", "tasks:app", short_id(failing), env=narrow()))

    lines = [line.rstrip() for line in shown.splitlines()]
    assert f"RuntimeError: {reason.strip()}" in lines  # the traceback's last line, unbroken
    assert "Traceback (most recent call last):" in lines
    assert "None" not in shown


def test_help_names_the_url_option_its_variable_and_examples(project: Project) -> None:
    top = ok(project.cli("--help"))
    assert "--url URL" in top and "CONVEYOR_URL" in top and "workers" in top
    for command in ("worker", "enqueue", "jobs", "job", "retry", "cancel", "queues", "workers", "purge", "config",
                    "demo"):
        assert "Example" in ok(project.cli(command, "--help")), command
    assert "Usage: conveyor config [OPTIONS] [APP]" in ok(project.cli("config", "--help"))
    assert "--reload" in ok(project.cli("worker", "--help"))


def test_url_option_points_the_commands_at_another_database(project: Project, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    url = f"sqlite:///{other}"
    job_id = ok(project.cli("--url", url, "enqueue", "tasks:app", "add", "[1, 2]")).strip()
    assert other.exists()
    assert orjson.loads(ok(project.cli("--url", url, "job", "tasks:app", job_id, "--json")))["id"] == job_id
    one_line_error(project.cli("job", "tasks:app", job_id), job_id)  # not in the project's database
    assert orjson.loads(ok(project.cli("--url", url, "config", "--json")))["url"]["value"] == url


def test_shell_completion_script_is_produced(project: Project) -> None:
    script = ok(project.cli(env={"_CONVEYOR_COMPLETE": "bash_source"}))
    assert "_conveyor_completion" in script and "complete " in script
    zsh = ok(project.cli(env={"_CONVEYOR_COMPLETE": "zsh_source"}))
    assert "compdef _conveyor_completion conveyor" in zsh


def test_lookup_errors_suggest_the_nearest_name(project: Project) -> None:
    assert one_line_error(project.cli("jobs", "tasks:ap")) == \
        "Error: module 'tasks' has no attribute 'ap'; did you mean 'app'?"
    one_line_error(project.cli("jobs", "taks:app"), "no module named 'taks'", "did you mean 'tasks'?")
    one_line_error(project.cli("enqueue", "tasks:app", "ad", "[1, 2]"),
                   "unknown task 'ad'", "did you mean 'add'?", "registered: add, async_nap")


def test_workers_shows_each_worker_and_what_it_runs(project: Project) -> None:
    worker = project.worker("--pool", "thread", "-c", "2")
    napping = project.app.enqueue("nap", [30]).id
    project.wait_state(napping, "running")

    def running_now() -> str | None:
        out = ok(project.cli("workers", "tasks:app", env=narrow()))
        return out if f"nap {short_id(napping)}" in out else None

    out = fits_80_columns(wait_for(running_now, 15, "the worker to report the nap job"))
    assert out.splitlines()[0].split() == ["host", "pid", "pool", "queues", "running", "now", "done", "failed",
                                           "seen"]
    assert str(worker.pid) in out and "thread" in out and socket.gethostname()[:8] in out and "idle" in out
    listed = orjson.loads(ok(project.cli("workers", "tasks:app", "--json")))
    assert {"id": napping, "task": "nap"} in [j for w in listed for j in w["running"]]


def test_worker_banner_names_the_database_file(project: Project) -> None:
    worker = project.worker("--pool", "thread", "-c", "1")
    banner = worker.wait_log("conveyor worker ")
    assert f"broker sqlite:///{project.db}" in banner


def test_worker_exits_with_one_line_when_redis_cannot_be_reached(project: Project) -> None:
    pytest.importorskip("redis")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://:hunter2@127.0.0.1:{port}/3"

    result = project.cli("worker", "tasks:app", "-c", "1", env={"CONVEYOR_URL": url}, timeout=60)

    line = one_line_error(result, f"cannot reach Redis at 127.0.0.1:{port}/3")
    assert "hunter2" not in result.stderr
    assert "retry" not in line and "reconnect" not in line


def test_worker_reload_restarts_on_a_code_change(project: Project) -> None:
    pytest.importorskip("watchfiles")
    err = project.folder / "reload.err"
    with err.open("wb") as ferr:
        proc = subprocess.Popen([*CONVEYOR, "worker", "tasks:app", "--pool", "thread", "-c", "1", "--reload"],
                                cwd=project.folder, env=project.environ(), stdout=ferr, stderr=ferr,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        first = wait_for(lambda: project.app.broker.workers(), 20, "the first worker to report")
        tasks = project.folder / "tasks.py"
        tasks.write_text(tasks.read_text() + '\n\n@app.task(name="added_later")\ndef added_later() -> str:\n'
                         '    return "new code"\n')
        wait_for(lambda: "tasks.py changed: restarting the worker" in err.read_text(), 20, "the restart")
        job_id = ok(project.cli("enqueue", "tasks:app", "added_later")).strip()  # the CLI reads the new module
        assert project.wait_state(job_id, "succeeded", timeout=30).state == "succeeded"
        assert first[0].supervisor not in {w.supervisor for w in project.app.broker.workers()}
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, 15)  # the reloader stops its worker, then exits
        try:
            assert proc.wait(20) == 0, err.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
    assert "Traceback" not in err.read_text()


def test_a_second_demo_is_refused_and_the_first_keeps_its_files(project: Project) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        first = subprocess.Popen([*CONVEYOR, "demo", "--jobs", "6", "--port", str(port)], cwd=project.folder,
                                 env=project.environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            db = project.folder / "conveyor-demo.db"
            wait_for(lambda: db.exists() and (project.folder / "conveyor-demo.log").exists(), 20, "the first demo")
            second = project.cli("demo", "--jobs", "1", "--port", "0", timeout=60)
            one_line_error(second, "another conveyor demo", str(db), "--db")
            out, err = first.communicate(timeout=90)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, 9)
    assert first.returncode == 0, out + err
    assert db.exists()
    assert f"port {port} is taken: the dashboard uses port " in out
    token = re.search(r"token=([\w-]+)", out)
    assert token is not None and (out + err).count(token.group(1)) == 1  # printed once
    assert "conveyor demo --serve" in out  # not a terminal: the dashboard is not kept up, and how to keep it
