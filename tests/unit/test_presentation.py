"""presentation: what people read about a job (no I/O)."""

from __future__ import annotations

from conveyor.brokers import JobRecord
from conveyor.presentation import display_state, error_label, format_duration, short_task, shown_progress


def job(**fields: object) -> JobRecord:
    values: dict[str, object] = {"state": "queued", **fields}
    return JobRecord(id="01a237d4-fa9a-764b-b347-193782c7f453", task="t", queue="default", payload=b"{}",
                     **values)  # type: ignore[arg-type]


def test_durations_for_people() -> None:
    assert [format_duration(s) for s in (0.0001, 0.25, 12.44, 185, 7380, 93600)] == [
        "0.1 ms", "250 ms", "12.4 s", "3 min 05 s", "2 h 03 min", "1 d 02 h"]
    assert format_duration(None, "-") == "-"


def test_task_names_keep_the_function_whole() -> None:
    assert short_task("shop.media.tasks.transcode_video", 24) == "s.m.t.transcode_video"
    assert short_task("transcode", 24) == "transcode"
    assert short_task("a.really_long_function_name_that_does_not_fit", 20).startswith("…")


def test_reserved_and_failed_retry_states() -> None:
    assert display_state(job(state="running")) == "reserved"
    assert display_state(job(state="running", started_at=1.0)) == "running"
    waiting = job(state="scheduled", attempts=1, run_at=0.0, error={"type": "E", "message": "m"})
    assert display_state(waiting) == "failed, retry at 00:00:00"
    assert display_state(job(state="scheduled", run_at=0.0)) == "scheduled"


def test_errors_a_job_went_on_from_are_labelled() -> None:
    assert error_label(job(state="failed", error={"type": "E"})) == "error"
    assert error_label(job(state="succeeded", attempts=2, error={"type": "E"})) == "error of attempt 1"
    refused = job(state="succeeded", attempts=1, error={"type": "UnknownTask", "refused_by": ["w1"]})
    assert error_label(refused) == "handed back by workers without its task"
    assert error_label(job(state="succeeded")) is None


def test_a_succeeded_job_shows_complete_progress() -> None:
    assert shown_progress(job(state="succeeded", progress=0.5, progress_message="resizing")) == (1.0, None)
    assert shown_progress(job(state="running", progress=0.5, progress_message="resizing")) == (0.5, "resizing")
