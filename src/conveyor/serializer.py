"""Message bodies: JSON (orjson) by default; pickle only when turned on explicitly."""

from __future__ import annotations

import pickle
from typing import Any, Protocol

import orjson

from .errors import SerializationError


def _default(value: Any) -> Any:
    """Encode what orjson does not know natively: pydantic models, sets, bytes."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, bytes):
        # As UTF-8 text, which is what validation turns a str back into for a ``bytes`` parameter;
        # any other encoding would come back altered, so other bytes are refused, not corrupted.
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise TypeError("bytes that are not UTF-8 cannot travel as JSON: "
                            "base64-encode them or use the pickle serializer") from None
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class Serializer(Protocol):
    """Turns payloads and results into bytes and back."""

    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JSONSerializer:
    """orjson, with pydantic models, dataclasses, datetimes, UUIDs and enums understood."""

    name = "json"
    _options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

    def dumps(self, value: Any) -> bytes:
        try:
            return orjson.dumps(value, default=_default, option=self._options)
        except (TypeError, orjson.JSONEncodeError) as exc:
            # orjson chains what ``_default`` raised, which says more than its own message.
            raise SerializationError(f"cannot encode as JSON: {exc.__cause__ or exc}") from None

    def loads(self, data: bytes) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SerializationError(f"malformed JSON message: {exc}") from None


class PickleSerializer:
    """pickle: any Python object, but only for trusted producers. Never the default."""

    name = "pickle"

    def dumps(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise SerializationError(f"cannot pickle: {exc}") from None

    def loads(self, data: bytes) -> Any:
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise SerializationError(f"malformed pickle message: {exc}") from None


def get_serializer(name: str) -> Serializer:
    """The serializer called ``name`` (``json`` or ``pickle``)."""
    if name == "json":
        return JSONSerializer()
    if name == "pickle":
        return PickleSerializer()
    raise SerializationError(f"unknown serializer {name!r}: expected 'json' or 'pickle'")
