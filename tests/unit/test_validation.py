"""Arguments are checked against the task's signature and type hints at enqueue; nothing bad is stored."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pydantic
import pytest

from conveyor import Conveyor, InvalidArguments, PayloadTooLarge, Task, UnknownTask
from conveyor.brokers import Outcome


class Address(pydantic.BaseModel):
    city: str
    zip: str


class Order(pydantic.BaseModel):
    id: int
    placed: datetime
    ship_to: Address
    tags: set[str] = set()


@pytest.fixture
def transcode(app: Conveyor) -> Task[Any, dict[str, str]]:
    @app.task(name="transcode")
    def transcode(path: str, fmt: str = "mp4") -> dict[str, str]:
        return {"out": f"{path}.{fmt}"}

    return transcode


def test_wrong_type_names_argument_and_expected_type(app: Conveyor, transcode: Task[Any, Any]) -> None:
    with pytest.raises(InvalidArguments, match=r"argument 'path' \(expected str\)") as caught:
        transcode.enqueue(42)
    err = caught.value
    assert err.task == "transcode"
    assert isinstance(err, ValueError)
    assert [(e["argument"], e["expected"]) for e in err.errors] == [("path", "str")]
    assert err.errors[0]["input"] == "42"
    assert app.broker.counts() == {}


def test_wrong_type_of_keyword_argument(app: Conveyor, transcode: Task[Any, Any]) -> None:
    with pytest.raises(InvalidArguments, match=r"argument 'fmt' \(expected str\)"):
        transcode.enqueue("in.mov", fmt=["webm"])
    assert app.broker.counts() == {}


def test_missing_argument(app: Conveyor, transcode: Task[Any, Any]) -> None:
    with pytest.raises(InvalidArguments, match=r"argument 'path' \(expected str\): Missing") as caught:
        transcode.enqueue(fmt="webm")
    assert "input" not in caught.value.errors[0]
    assert app.broker.counts() == {}


def test_unexpected_keyword(app: Conveyor, transcode: Task[Any, Any]) -> None:
    with pytest.raises(InvalidArguments, match=r"argument 'codec': Unexpected keyword argument"):
        transcode.enqueue("in.mov", codec="h264")
    assert app.broker.counts() == {}


def test_too_many_positional(app: Conveyor, transcode: Task[Any, Any]) -> None:
    with pytest.raises(InvalidArguments, match=r"argument '#2': Unexpected positional argument"):
        transcode.enqueue("in.mov", "webm", "extra")
    assert app.broker.counts() == {}


def test_several_errors_are_all_reported(app: Conveyor) -> None:
    @app.task(name="resize")
    def resize(width: int, height: int) -> None:
        pass

    with pytest.raises(InvalidArguments) as caught:
        resize.enqueue("wide", "tall")  # type: ignore[arg-type]
    assert [e["argument"] for e in caught.value.errors] == ["width", "height"]
    assert "argument 'width' (expected int)" in str(caught.value)
    assert "argument 'height' (expected int)" in str(caught.value)


def test_lax_conversion_is_stored_converted(app: Conveyor) -> None:
    @app.task(name="count")
    def count(n: int) -> None:
        pass

    job = count.enqueue("12")  # type: ignore[arg-type]
    assert job.args == [12]


def test_model_and_datetime_round_trip(
    app: Conveyor, work: Callable[[], Outcome]
) -> None:
    seen: list[tuple[Order, datetime]] = []

    @app.task(name="ship")
    def ship(order: Order, when: datetime) -> str:
        seen.append((order, when))
        return order.ship_to.city

    placed = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    order = Order(id=7, placed=placed, ship_to=Address(city="Lyon", zip="69001"), tags={"fragile"})
    when = placed + timedelta(days=2)
    job = ship.enqueue(order, when=when)

    # Stored as plain JSON ...
    stored = orjson.loads(job.record.payload)
    assert stored == {
        "args": [{"id": 7, "placed": "2024-05-01T12:30:00Z", "ship_to": {"city": "Lyon", "zip": "69001"},
                  "tags": ["fragile"]}],
        "kwargs": {"when": "2024-05-03T12:30:00+00:00"},
    }
    # ... validated back into a model and a datetime by Task.validate, as the worker does.
    args, kwargs = ship.validate(stored["args"], stored["kwargs"])
    assert args == (order,)
    assert isinstance(args[0], Order)
    assert kwargs == {"when": when}
    assert isinstance(kwargs["when"], datetime)

    outcome = work()
    assert outcome.state == "succeeded"
    assert seen == [(order, when)]
    assert job.result(timeout=1) == "Lyon"


def test_dict_is_validated_into_the_model_at_enqueue(app: Conveyor) -> None:
    @app.task(name="ship")
    def ship(order: Order) -> None:
        pass

    job = ship.enqueue({"id": "3", "placed": "2024-01-01T00:00:00Z",  # type: ignore[arg-type]
                        "ship_to": {"city": "Oslo", "zip": "0150"}})
    assert job.args[0]["id"] == 3

    with pytest.raises(InvalidArguments, match=r"argument 'order\.ship_to\.zip' \(expected Order\)"):
        ship.enqueue({"id": 1, "placed": "2024-01-01T00:00:00Z", "ship_to": {"city": "Oslo"}})  # type: ignore[arg-type]


def test_utf8_bytes_round_trip_and_other_bytes_are_refused(app: Conveyor) -> None:
    from conveyor.errors import SerializationError

    @app.task(name="store")
    def store(data: bytes) -> None:
        pass

    job = store.enqueue("héllo".encode())
    stored = orjson.loads(job.record.payload)
    assert store.validate(stored["args"], stored["kwargs"]) == (("héllo".encode(),), {})
    with pytest.raises(SerializationError, match="UTF-8"):
        store.enqueue(b"\xff\xfe\x00")
    assert app.broker.counts() == {"default": {"queued": 1}}


def test_unknown_task_name_in_app_enqueue(app: Conveyor, transcode: Task[Any, Any]) -> None:
    with pytest.raises(UnknownTask, match="'transcod'"):
        app.enqueue("transcod", args=["in.mov"])
    assert app.broker.counts() == {}


def test_app_enqueue_by_name_validates_too(app: Conveyor, transcode: Task[Any, Any]) -> None:
    job = app.enqueue("transcode", args=["in.mov"], kwargs={"fmt": "webm"}, priority=3)
    assert (job.args, job.kwargs, job.record.priority) == (["in.mov"], {"fmt": "webm"}, 3)
    with pytest.raises(InvalidArguments, match="'path'"):
        app.enqueue("transcode", args=[1])
    with pytest.raises(TypeError, match="must be a list or tuple"):
        app.enqueue("transcode", args="in.mov")
    assert app.broker.counts() == {"default": {"queued": 1}}


def test_payload_over_max_payload() -> None:
    app = Conveyor("memory://", max_payload=1000)

    @app.task(name="echo")
    def echo(text: str) -> None:
        pass

    echo.enqueue("x" * 900)
    with pytest.raises(PayloadTooLarge) as caught:
        echo.enqueue("x" * 2000)
    err = caught.value
    assert err.limit == 1000
    assert err.size > 2000
    assert f"{err.size} bytes" in str(err)
    assert "limit of 1000 bytes" in str(err)
    assert "'echo'" in str(err)
    assert app.broker.counts() == {"default": {"queued": 1}}


def test_enqueue_many_with_one_bad_item_stores_nothing(app: Conveyor, transcode: Task[Any, Any]) -> None:
    with pytest.raises(InvalidArguments, match=r"argument '\[1\]\.path' \(expected str\)") as caught:
        transcode.enqueue_many([("a.mov",), (2,), ("c.mov",)])
    assert caught.value.errors[0]["argument"] == "[1].path"
    assert app.broker.counts() == {}


def test_enqueue_many_names_the_index_of_a_bad_keyword_item(app: Conveyor, transcode: Task[Any, Any]) -> None:
    with pytest.raises(InvalidArguments, match=r"'\[2\]\.fmt'"):
        transcode.enqueue_many([("a.mov",), {"path": "b.mov"}, {"path": "c.mov", "fmt": 3}])
    assert app.broker.counts() == {}
