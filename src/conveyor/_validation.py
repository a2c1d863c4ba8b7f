"""Argument validation and result decoding with pydantic, imported on first use: a worker, which
runs jobs whose arguments were checked at enqueue, never pays for importing pydantic (~50 ms)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

import pydantic
from pydantic_core import ArgsKwargs, SchemaValidator
from pydantic_core import core_schema as cs

from .errors import ConfigError, InvalidArguments

Validator = Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]


def type_name(tp: Any) -> str:
    """How an expected type is named in error messages."""
    if tp is inspect.Parameter.empty or tp is Any:
        return "any"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def build_validator(fn: Callable[..., Any], name: str) -> Validator:
    """A callable binding ``(*args, **kwargs)`` to ``fn``'s signature and checking them against its
    type hints: it returns the converted ``(args, kwargs)`` or raises :class:`InvalidArguments`
    naming each bad argument and its expected type."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raise ConfigError(f"cannot resolve the type hints of task {name!r}: {exc}") from None
    sig = inspect.signature(fn)
    params = [p.replace(annotation=hints.get(p.name, Any)) for p in sig.parameters.values()]
    expected = {p.name: hints.get(p.name, inspect.Parameter.empty) for p in params}
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, kwargs

    capture.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=params, return_annotation=inspect.Signature.empty
    )
    capture.__annotations__ = {p.name: p.annotation for p in params}
    capture.__name__ = capture.__qualname__ = name
    schema = scalar_call_schema(params, capture)
    if schema is not None:
        check = SchemaValidator(schema, {"title": name}).validate_python
    else:
        # The validator of pydantic.validate_call(capture), called without its two wrapper
        # layers: the same schema (so the same conversions and errors), 0.3 us less per call.
        config = pydantic.ConfigDict(arbitrary_types_allowed=True)
        target: Any = capture
        check = pydantic.TypeAdapter(target, config=config).validator.validate_python

    def explain(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
        out = []
        for err in exc.errors(include_url=False):
            loc = list(err.get("loc", ()))
            head = loc[0] if loc else "?"
            if isinstance(head, int):
                head = positional[head] if head < len(positional) else f"#{head}"
            where = ".".join([str(head), *map(str, loc[1:])])
            entry = {"argument": where, "expected": type_name(expected[head]) if head in expected else None,
                     "message": err["msg"]}
            if err.get("type") not in ("missing_argument", "missing"):
                entry["input"] = repr(err.get("input"))[:200]
            out.append(entry)
        return out

    def validator(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        try:
            return check(ArgsKwargs(args, kwargs))  # type: ignore[no-any-return]
        except pydantic.ValidationError as exc:
            raise InvalidArguments(name, explain(exc)) from None

    validator.check = check  # type: ignore[attr-defined]  # pydantic's own errors, for the parity tests
    return validator


def result_decoder(fn: Callable[..., Any]) -> Callable[[Any], Any] | None:
    """A function turning a stored JSON result back into ``fn``'s declared return type, or None
    when it declares none (for an ``async def`` the hint is already the awaited type)."""
    try:
        hint = typing.get_type_hints(fn).get("return", Any)
    except Exception:
        hint = Any
    if hint in (Any, type(None), None):
        return None
    adapter = pydantic.TypeAdapter(hint)

    def decode(value: Any) -> Any:
        try:
            return adapter.validate_python(value)
        except pydantic.ValidationError:
            return value

    return decode


_SCALARS: dict[Any, Callable[[], Any]] = {int: cs.int_schema, str: cs.str_schema, float: cs.float_schema,
                                           bool: cs.bool_schema, bytes: cs.bytes_schema, Any: cs.any_schema}
_MODES: dict[Any, Any] = {inspect.Parameter.POSITIONAL_ONLY: "positional_only",
                          inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional_or_keyword",
                          inspect.Parameter.KEYWORD_ONLY: "keyword_only"}


def scalar_call_schema(params: Sequence[inspect.Parameter], function: Callable[..., Any]) -> Any:
    """The core schema pydantic generates for ``function`` when every parameter is a plain scalar
    (int, str, float, bool, bytes or Any, with plain defaults), built directly: pydantic's own
    generation imports ~20 ms of modules on first use, which each new producer paid on its
    first enqueue. None for any other signature (then pydantic generates it)."""
    arguments = []
    for p in params:
        try:
            make, mode = _SCALARS.get(p.annotation), _MODES.get(p.kind)
        except TypeError:  # an unhashable annotation
            return None
        if make is None or mode is None or type(p.default).__module__.startswith("pydantic"):
            return None
        schema = make()
        if p.default is not inspect.Parameter.empty:
            schema = cs.with_default_schema(schema, default=p.default)
        arguments.append(cs.arguments_parameter(p.name, schema, mode=mode))
    return cs.call_schema(cs.arguments_schema(arguments), function)
