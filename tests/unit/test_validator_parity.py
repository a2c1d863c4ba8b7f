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
from pydantic_core import ArgsKwargs

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


def constrained(x: typing.Annotated[int, pydantic.Field(ge=1)]) -> None: ...


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
    check = (task._validator or task._build_validator()).check  # type: ignore[attr-defined]
    assert repr(outcome(lambda: check(ArgsKwargs(args, kwargs)))) == repr(expected)  # errors item by item


def bound(fn: Callable[..., Any], args: Any, kwargs: Any) -> dict[str, Any]:
    call = inspect.signature(fn).bind(*args, **kwargs)
    call.apply_defaults()
    return {name: (type(value), value) for name, value in call.arguments.items()}


EXACT: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = [
    (plain, (1,), {}), (plain, (1, "b"), {"z": 2.5}), (plain, (), {"x": 3, "y": "c"}), (plain, (1,), {"z": 2}),
    (plain, (True,), {}), (plain, (1, "a", 2.0), {}), (plain, (1,), {"x": 1}), (plain, (1,), {"w": 1}),
    (plain, (1.0,), {}), (plain, (), {"y": "q"}), (constrained, (0,), {}), (constrained, (2,), {}),
]


@pytest.mark.parametrize(("fn", "args", "kwargs"), CASES + EXACT)
def test_a_worker_skips_validation_only_where_it_changes_nothing(fn: Callable[..., Any], args: tuple[Any, ...],
                                                                 kwargs: dict[str, Any]) -> None:
    """Task.prepare (the worker's path) takes arguments as they are only when validating them would
    give the same values of the same types; otherwise it validates, with the same errors."""
    task = Conveyor("memory://").task(fn)
    expected = outcome(lambda: task.validate(list(args), dict(kwargs)))
    got = outcome(lambda: task.prepare(list(args), dict(kwargs)))
    assert got[0] == expected[0]
    if expected[0] == "ok":
        assert repr(bound(fn, *got[1])) == repr(bound(fn, *expected[1]))
    else:
        assert got == expected


def test_a_worker_with_scalar_tasks_never_imports_pydantic() -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom conveyor import Conveyor\napp = Conveyor('memory://')\n"
            "@app.task\ndef add(a: int, b: float = 1.0, *, c: str = '') -> float: return a + b\n"
            "assert add.prepare([1, 2.5], {'c': 'x'}) == ([1, 2.5], {'c': 'x'})\n"
            "from conveyor.worker import supervisor, runner\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_core')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_plain_scalar_signatures_skip_pydantic_schema_generation() -> None:
    from conveyor._validation import scalar_call_schema as _scalar_call_schema

    def params(fn: Callable[..., Any]) -> list[inspect.Parameter]:
        hints = typing.get_type_hints(fn)
        return [p.replace(annotation=hints.get(p.name, Any)) for p in inspect.signature(fn).parameters.values()]

    assert _scalar_call_schema(params(plain), plain) is not None
    assert _scalar_call_schema(params(scalars), scalars) is not None
    for fn in (variadic, rich, field_default):
        assert _scalar_call_schema(params(fn), fn) is None


def untyped_defaults(a, b=None, *, c=(1, 2), d: bool = False) -> None: ...  # type: ignore[no-untyped-def]


@pytest.mark.parametrize(("fn", "args", "kwargs"), [
    (plain, (1,), {}), (plain, (1, "b"), {}), (plain, (1,), {"y": "b"}), (plain, (), {"x": 1}),
    (plain, (1,), {"z": 2.5}), (plain, (), {"z": 2.5, "x": 3, "y": "c"}),
    (untyped_defaults, ({"k": [1]},), {}), (untyped_defaults, (1, [2]), {"d": True}),
    (untyped_defaults, (), {"a": None, "c": "x"}),
])
def test_an_enqueue_that_fits_a_scalar_signature_stores_what_validation_returns(
        fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Calls of a scalar signature whose arguments have exactly their declared types skip pydantic
    at enqueue too: the stored arguments are what pydantic's validator returns (defaults included,
    by name, in the signature's order)."""
    from conveyor._validation import build_validator
    from conveyor.task import _PlainSignature

    shape = _PlainSignature.of(fn)
    assert shape is not None and shape.fits(args, kwargs)
    fast = shape.bound(args, kwargs)
    validated = build_validator(fn, fn.__name__)(*args, **kwargs)
    assert fast == validated
    assert list(fast[1]) == list(validated[1])  # the same order: the same stored payload


def test_a_producer_enqueueing_scalar_calls_never_imports_pydantic() -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom conveyor import Conveyor\napp = Conveyor('memory://')\n"
            "@app.task\ndef add(a: int, b: float = 1.0, *, c: str = '') -> float: return a + b\n"
            "add.enqueue(1, 2.5, c='x')\nadd.enqueue_many([(1,), (2, 3.0)])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_core')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
