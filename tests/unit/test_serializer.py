"""Message bodies: JSON by default, pickle only when asked."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from enum import Enum
from typing import Any

import pydantic
import pytest

from conveyor import Conveyor
from conveyor.errors import ConfigError, SerializationError
from conveyor.serializer import JSONSerializer, PickleSerializer, get_serializer


class Colour(Enum):
    RED = "red"


class Point(pydantic.BaseModel):
    x: int
    y: int


class Envelope(pydantic.BaseModel):
    when: datetime
    day: date
    id: uuid.UUID
    point: Point
    tags: set[str]
    colour: Colour


@dataclass
class Pair:
    a: int
    b: str


def test_json_round_trip() -> None:
    original = Envelope(when=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2))),
                        day=date(2024, 5, 6), id=uuid.uuid4(), point=Point(x=1, y=2), tags={"a", "b"},
                        colour=Colour.RED)
    s = JSONSerializer()
    body = s.dumps({"when": original.when, "day": original.day, "id": original.id, "point": original.point,
                    "tags": original.tags, "colour": original.colour})
    assert isinstance(body, bytes)
    plain = s.loads(body)
    assert plain["when"] == "2024-05-06T07:08:09.123456+02:00"
    assert plain["id"] == str(original.id)
    assert plain["point"] == {"x": 1, "y": 2}
    assert sorted(plain["tags"]) == ["a", "b"]
    assert Envelope.model_validate(plain) == original


def test_json_naive_datetime_dataclass_and_int_keys() -> None:
    s = JSONSerializer()
    naive = datetime(2024, 1, 1, 12, 0)
    assert pydantic.TypeAdapter(datetime).validate_python(s.loads(s.dumps(naive))) == naive
    assert s.loads(s.dumps(Pair(1, "x"))) == {"a": 1, "b": "x"}
    assert s.loads(s.dumps({1: "one"})) == {"1": "one"}
    assert s.loads(s.dumps(frozenset([3]))) == [3]


def test_json_refuses_unknown_objects() -> None:
    with pytest.raises(SerializationError, match="object is not JSON serializable"):
        JSONSerializer().dumps({"x": object()})


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff", b'{"a": 1'])
def test_malformed_json(body: bytes) -> None:
    with pytest.raises(SerializationError, match="malformed JSON message"):
        JSONSerializer().loads(body)


def test_pickle_only_when_asked() -> None:
    assert Conveyor("memory://").serializer.name == "json"
    assert isinstance(get_serializer("json"), JSONSerializer)
    app = Conveyor("memory://", serializer="pickle")
    assert isinstance(app.serializer, PickleSerializer)
    with pytest.raises(SerializationError, match="unknown serializer 'yaml'"):
        get_serializer("yaml")
    with pytest.raises(ConfigError, match="'serializer'"):
        Conveyor("memory://", serializer="yaml")


def test_pickle_round_trip_and_errors() -> None:
    s = PickleSerializer()
    value = {"pair": Pair(1, "x"), "raw": b"\xff", "when": datetime(2024, 1, 1)}
    assert s.loads(s.dumps(value)) == value
    with pytest.raises(SerializationError, match="malformed pickle"):
        s.loads(b"not a pickle")
    with pytest.raises(SerializationError, match="cannot pickle"):
        s.dumps(lambda: None)


def test_pickle_app_end_to_end() -> None:
    from conveyor.worker.runner import Runner

    app = Conveyor("memory://", serializer="pickle")

    @app.task(name="swap")
    def swap(pair: Pair) -> Pair:
        return Pair(pair.a + 1, pair.b * 2)

    job = swap.enqueue(Pair(1, "x"))
    assert job.record.payload.startswith(b"\x80")  # a pickle, not JSON
    runner = Runner(app, app.broker, app.settings, "c")
    (lease,) = app.broker.fetch(["default"], 1, 30.0, "c")
    outcome = runner.execute(lease)
    assert app.broker.ack([outcome]) == [True]
    assert job.result() == Pair(2, "xx")


def test_json_app_refuses_arbitrary_objects_at_enqueue(app: Conveyor) -> None:
    @app.task(name="take")
    def take(pair: Pair) -> None:
        pass

    # A dataclass is fine as JSON ...
    take.enqueue(Pair(1, "x"))

    class Opaque:
        pass

    @app.task(name="opaque")
    def opaque(thing: Any) -> None:
        pass

    # ... an arbitrary object is not, and nothing is stored.
    with pytest.raises(SerializationError, match="Opaque"):
        opaque.enqueue(Opaque())
    assert app.broker.counts() == {"default": {"queued": 1}}
