"""What the command line prints and finds: tables fitted to 80 columns, job ids by their short form
or a unique start, apps by ``module:attribute`` with suggestions, broker URLs in banners."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from conveyor import Conveyor
from conveyor.brokers import JobRecord, QueueInfo, WorkerInfo
from conveyor.config import Settings, describe_url
from conveyor.errors import JobNotFound
from conveyor.listing import jobs_table, queues_table, workers_table
from conveyor.loading import AmbiguousJobId, AppNotFound, find_job, load_app
from conveyor.presentation import short_id


def rendered(table: object, width: int = 80) -> list[str]:
    console = Console(width=width, color_system=None)
    with console.capture() as captured:
        console.print(table)
    return captured.get().splitlines()


@pytest.fixture
def app() -> Conveyor:
    app = Conveyor("memory://")

    @app.task(name="reports.monthly.render_invoice_pdf")
    def render(n: int) -> int:
        return n

    return app


def test_short_ids_tell_jobs_enqueued_together_apart(app: Conveyor) -> None:
    ids = [app.enqueue("reports.monthly.render_invoice_pdf", [i]).id for i in range(50)]
    assert len({short_id(i) for i in ids}) == 50
    assert len({i[:8] for i in ids}) < 50  # UUIDv7: the start is the time, shared by a burst


def test_a_job_is_found_by_its_id_its_short_id_or_a_unique_start(app: Conveyor) -> None:
    ids = [app.enqueue("reports.monthly.render_invoice_pdf", [i]).id for i in range(5)]
    broker = app.broker
    for job_id in ids:
        assert find_job(broker, job_id).id == job_id
        assert find_job(broker, short_id(job_id)).id == job_id
        assert find_job(broker, job_id[:-1]).id == job_id
    with pytest.raises(AmbiguousJobId, match="ambiguous") as ambiguous:
        find_job(broker, ids[0][:8])  # shared by all five
    assert ids[0] in str(ambiguous.value)
    with pytest.raises(JobNotFound):
        find_job(broker, "ffffffff")
    with pytest.raises(JobNotFound):
        find_job(broker, ids[0][-3:])  # too short to be meant


def _record(n: int, **changes: object) -> JobRecord:
    now = time.time()
    base = JobRecord(id=f"01a237d2-5ebf-7097-8ea8-ce179d27{n:04x}", task="reports.monthly.render_invoice_pdf",
                     queue="invoices-eu-west", state="succeeded", payload=b"{}", priority=0, attempts=1,
                     max_attempts=4, created_at=now - 300, run_at=now - 300, started_at=now - 290,
                     finished_at=now - 288)
    return replace(base, **changes)


def test_the_jobs_list_fits_80_columns_with_whole_headers_and_short_ids() -> None:
    now = time.time()
    error = {"type": "ConnectionError", "message": "upstream timed out while importing batch 7 " * 3}
    records = [
        _record(1),
        _record(2, state="running", started_at=None, finished_at=None),
        _record(3, state="scheduled", attempts=1, error=error, run_at=now + 30, started_at=now - 5,
                finished_at=now - 4),
        _record(4, state="failed", attempts=4, error=error),
        _record(5, state="running", finished_at=None, progress=0.5, progress_message="resizing"),
    ]
    lines = rendered(jobs_table(records, 80, now))
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    header = lines[0].split()
    known = ["id", "task", "queue", "state", "tries", "created", "took", "done", "error"]
    assert set(header) <= set(known), header  # whole words: no header is cut
    assert {"id", "task", "state", "tries", "created", "error"} <= set(header)  # the optional ones may go
    text = "\n".join(lines)
    for r in records:
        assert short_id(r.id) in text
    assert "reserved" in text
    assert "failed," in text and "retry" in text
    assert "render_invoice_pdf" in text  # the function's name is kept whole


def test_queues_and_workers_fit_80_columns() -> None:
    counts = {"queued": 12345, "scheduled": 3, "running": 7, "succeeded": 1_000_000, "failed": 2, "cancelled": 1}
    queues = [QueueInfo("invoices-eu-west-priority", True, counts), QueueInfo("mail", False, counts)]
    lines = rendered(queues_table(queues, {"mail": 3}, 80))
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    assert lines[0].split() == ["queue", "queued", "scheduled", "reserved", "running", "succeeded", "failed",
                                "cancelled"]
    mail = next(line for line in lines if line.startswith("mail"))
    assert mail.split()[1:5] == ["12345", "3", "3", "4"]  # 3 of the 7 running are reserved
    assert "(paused)" in "\n".join(lines)

    job_id = "01a237d2-5ebf-7097-8ea8-ce179d278d00"
    worker = WorkerInfo(id="w1", hostname="build-server-01.eu-west.example.com", pid=41234,
                        queues=["default", "mail", "media"], started_at=time.time(), last_seen=time.time(),
                        pool="process", current=[job_id], processed=120, failed=3)
    idle = replace(worker, id="w2", pid=41235, current=[])
    lines = rendered(workers_table([worker, idle], {job_id: "reports.monthly.render_invoice_pdf"}, 80))
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    text = "\n".join(lines)
    assert "41234" in text and "process" in text and short_id(job_id) in text and "idle" in text


def test_app_lookup_errors_say_what_is_wrong_and_suggest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lookup_tasks.py").write_text("from conveyor import Conveyor\napp = Conveyor('memory://')\n"
                                              "helper = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert isinstance(load_app("lookup_tasks:app"), Conveyor)
        assert isinstance(load_app("lookup_tasks"), Conveyor)  # the one app of the module
        with pytest.raises(AppNotFound) as missing:
            load_app("lookup_tasks:ap")
        assert str(missing.value) == "module 'lookup_tasks' has no attribute 'ap'; did you mean 'app'?"
        with pytest.raises(AppNotFound, match="is a int, not a Conveyor app; did you mean 'app'"):
            load_app("lookup_tasks:helper")
        with pytest.raises(AppNotFound, match=r"no module named 'lookup_task'.*did you mean 'lookup_tasks'"):
            load_app("lookup_task:app")
        with pytest.raises(AppNotFound, match="not module:attribute"):
            load_app(":app")
    finally:
        sys.modules.pop("lookup_tasks", None)


def test_banner_urls_name_the_file_or_the_server_without_the_password(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert describe_url("sqlite:///jobs.db") == f"sqlite:///{tmp_path}/jobs.db"
    assert describe_url("sqlite:////srv/jobs.db?poll=0.5") == "sqlite:////srv/jobs.db?poll=0.5"
    assert describe_url("redis://:s3cret@10.0.0.5:6380/2") == "redis://:***@10.0.0.5:6380/2"
    where = Settings(url="redis://u:s3cret@10.0.0.5:6380/2").where()
    assert where == "broker redis://u:***@10.0.0.5:6380/2"
