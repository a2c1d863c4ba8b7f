"""A task's argument validator calls pydantic's validator of the task's signature directly (without
``validate_call``'s wrappers): it must convert and refuse exactly as ``pydantic.validate_call`` does."""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import typing
from collections.abc import Callable
from typing import Any

import pydantic
import pytest

from conveyor import Conveyor
from conveyor.errors import InvalidArguments


class Model(pydantic.BaseModel):
    a: int


@dataclasses.dataclass
class Point:
    b: str


class Opaque:
    pass


def plain(x: int, y: str = "a", *, z: float = 1.0) -> None: ...


def scalars(a, /, b: bool, c: bytes = b"", d: Any = None, *, e: str = "x", f: int = 0) -> None: ...  # type: ignore[no-untyped-def]


def variadic(a, /, b: list[int], *rest: int, **kw: str) -> None: ...  # type: ignore[no-untyped-def]


def rich(m: Model, p: Point, o: Opaque, when: datetime.datetime, d: dict[str, int] | None = None) -> None: ...


def field_default(x: int = pydantic.Field(default=3, ge=1)) -> None: ...


CASES: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = [
    (plain, (1,), {}), (plain, ("2",), {"y": "b"}), (plain, (), {}), (plain, (1, 2), {}),
    (plain, (1,), {"z": "x"}), (plain, (1, "a", 3), {}), (plain, (1,), {"q": 1}), (plain, (), {"x": 1, "z": 2}),
    (scalars, (1, "yes"), {}), (scalars, ([], "on", "b", {"k": 1}), {"e": "q", "f": "7"}), (scalars, (), {"b": 2}),
    (scalars, (1, True, 5), {}), (scalars, (1, None), {}), (scalars, (1, 0, b"x", 2, 3), {}),
    (scalars, (1, False), {"e": 5}), (scalars, (1, False), {"f": 1.5}), (scalars, (1, False), {"a": 1}),
    (variadic, (1, [1, 2]), {}), (variadic, (1, [1], 2, 3), {"k": "v"}), (variadic, (), {"a": 1, "b": []}),
    (variadic, (1, ["x"]), {"k": 1}),
    (rich, ({"a": 1}, {"b": "x"}, Opaque(), "2020-01-01T00:00:00"), {}),
    (rich, ({"a": "z"}, Point("q"), 1, "bad"), {"d": {"k": "v"}}),
    (field_default, (), {}), (field_default, (0,), {}), (field_default, ("5",), {}),
]


def reference(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What the validator was before: pydantic.validate_call of the signature with resolved hints."""
    hints = typing.get_type_hints(fn)
    sig = inspect.signature(fn)
    params = [p.replace(annotation=hints.get(p.name, Any)) for p in sig.parameters.values()]

    def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, kwargs

    capture.__signature__ = sig.replace(parameters=params, return_annotation=inspect.Signature.empty)  # type: ignore[attr-defined]
    capture.__annotations__ = {p.name: p.annotation for p in params}
    return pydantic.validate_call(config=pydantic.ConfigDict(arbitrary_types_allowed=True))(capture)


def outcome(call: Callable[[], Any]) -> Any:
    try:
        return "ok", call()
    except pydantic.ValidationError as exc:
        return "invalid", exc.errors(include_url=False)
    except Exception as exc:
        return "error", type(exc).__name__


@pytest.mark.parametrize(("fn", "args", "kwargs"), CASES)
def test_the_validator_agrees_with_validate_call(fn: Callable[..., Any], args: tuple[Any, ...],
                                                 kwargs: dict[str, Any]) -> None:
    task = Conveyor("memory://").task(fn)
    expected = outcome(lambda: reference(fn)(*args, **kwargs))
    if expected[0] == "invalid":
        with pytest.raises(InvalidArguments):
            task.validate(args, kwargs)
    elif expected[0] == "ok":
        assert repr(task.validate(args, kwargs)) == repr(expected[1])
    validator = task._validator or task._build_validator()
    assert repr(outcome(lambda: validator(*args, **kwargs))) == repr(expected)  # errors item by item


def test_plain_scalar_signatures_skip_pydantic_schema_generation() -> None:
    from conveyor.task import _scalar_call_schema

    def params(fn: Callable[..., Any]) -> list[inspect.Parameter]:
        hints = typing.get_type_hints(fn)
        return [p.replace(annotation=hints.get(p.name, Any)) for p in inspect.signature(fn).parameters.values()]

    assert _scalar_call_schema(params(plain), plain) is not None
    assert _scalar_call_schema(params(scalars), scalars) is not None
    for fn in (variadic, rich, field_default):
        assert _scalar_call_schema(params(fn), fn) is None
