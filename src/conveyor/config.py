"""Settings, from (highest first) explicit values and CLI flags, ``CONVEYOR_*`` environment
variables, ``conveyor.toml`` or ``[tool.conveyor]`` in ``pyproject.toml``, then defaults.

One :class:`Settings` object is used everywhere; :meth:`Settings.sources` says where each value
came from (``conveyor config`` prints it).
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

if TYPE_CHECKING:
    from pydantic import TypeAdapter

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

ENV_PREFIX = "CONVEYOR_"
SECRET_WORDS = ("pass", "secret", "token", "key", "auth", "credential")  # option names whose values are hidden


def redact_url(url: str) -> str:
    """``url`` with its password and the values of secret-looking options (``sentinel_password=``,
    ``token=``...) shown as ``***``: for logs, error messages and ``conveyor config``."""
    import re
    from urllib.parse import urlsplit

    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # unparseable (a broken IPv6 host...)
        parts = None
    if parts is None or "@" not in parts.netloc:
        # a password with an unencoded / ? or # ends urllib's netloc early: hide up to the next @
        masked = re.sub(r"^([^:/?#]+://[^:/@?#]*:)(?!\d+(?:[/?#]|$))[^@]*@", r"\1***@", url)  # not a port
        if masked != url or parts is None:
            return masked
    auth, at, hosts = parts.netloc.rpartition("@")
    netloc = auth.partition(":")[0] + ":***@" + hosts if at and ":" in auth else parts.netloc
    pairs = []
    for pair in parts.query.split("&") if parts.query else []:
        name, eq, value = pair.partition("=")
        secret = value and any(word in name.lower() for word in SECRET_WORDS)
        pairs.append(f"{name}{eq}***" if secret else pair)
    query = "?" + "&".join(pairs) if pairs else ""
    fragment = "#" + parts.fragment if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}{fragment}"


def describe_url(url: str) -> str:
    """``url`` for a log line or a banner: the password hidden (:func:`redact_url`), and a relative
    SQLite path made absolute, so that it names the very file (``sqlite:////srv/app/conveyor.db``)."""
    from urllib.parse import quote, unquote

    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rest, mark, query = url[len("sqlite:///"):].partition("?")
        if rest and rest != ":memory:":
            url = "sqlite:///" + quote(os.path.abspath(unquote(rest))) + mark + query
    return redact_url(url)


def _cpus() -> int:
    return os.cpu_count() or 2


@dataclass
class Settings:
    """Every setting of Conveyor. Field docs are shown by ``conveyor config``."""

    url: str = field(default="sqlite:///conveyor.db", metadata={"help": "broker URL"})
    store: str | None = field(default=None, metadata={"help": "job store URL when the broker has none"})
    queues: list[str] | None = field(default=None,
                                     metadata={"help": "queues a worker consumes (default: all of the app's)"})
    concurrency: int = field(default_factory=_cpus, metadata={"help": "pool size (processes, threads or coroutines)"})
    pool: Literal["process", "thread", "async"] = field(default="process", metadata={"help": "worker pool kind"})
    prefetch: int = field(default=128,
                          metadata={"help": "most jobs a consumer leases in one fetch (adaptive below it)"})
    max_jobs_per_child: int | None = field(default=None,
                                           metadata={"help": "recycle a pool process after this many jobs"})
    max_memory: int | None = field(default=None, metadata={"help": "recycle a pool process above this RSS (MB)"})
    grace: float = field(default=30.0, metadata={"help": "seconds running jobs get to finish on SIGTERM"})
    lease: float = field(default=10.0, metadata={"help": "lease length in seconds (extended by heartbeats)"})
    kill_after: float = field(default=5.0, metadata={"help": "seconds after a task's timeout before a hard kill"})
    unknown_task_timeout: float = field(default=300.0, metadata={
        "help": "seconds a job for a task no worker has may wait for one that has it before it fails"})
    retries: int = field(default=3, metadata={"help": "default retries of a task that raises"})
    max_payload: int = field(default=1_048_576, metadata={"help": "largest serialized arguments, bytes"})
    retention: float = field(default=7 * 86400.0, metadata={"help": "seconds succeeded/cancelled jobs are kept"})
    serializer: Literal["json", "pickle"] = field(default="json", metadata={"help": "message format"})
    log_level: str = field(default="INFO", metadata={"help": "logging level of the worker"})
    _sources: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def sources(self) -> dict[str, str]:
        """Where each setting came from: ``default``, a file path, ``env CONVEYOR_X`` or ``argument``."""
        return {f.name: self._sources.get(f.name, "default") for f in fields(self) if not f.name.startswith("_")}

    def where(self) -> str:
        """Where jobs are kept, for the worker's banner: ``broker URL`` (and ``, store URL``), each
        with its password hidden and a SQLite file's absolute path."""
        shown = f"broker {describe_url(self.url)}"
        return shown + (f", store {describe_url(self.store)}" if self.store else "")

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def replace(self, source: str = "argument", **values: Any) -> Settings:
        """A copy with ``values`` applied (None values are skipped), recorded as coming from ``source``."""
        data = {k: v for k, v in self.as_dict().items()}
        sources = dict(self._sources)
        for name, value in values.items():
            if value is None:
                continue
            data[name] = _convert(name, value, source)
            sources[name] = source
        new = Settings(**data)
        new._sources = sources
        return new


_FIELDS = {f.name: f for f in fields(Settings) if not f.name.startswith("_")}
_HINTS = get_type_hints(Settings)
_ADAPTERS: dict[str, TypeAdapter[Any]] = {}
# Lowest sensible value of the numeric settings (a pool of 0, a negative lease… are typos).
_MINIMUM: dict[str, float] = {
    "concurrency": 1, "prefetch": 1, "max_jobs_per_child": 1, "max_memory": 1, "grace": 0, "lease": 0,
    "kill_after": 0, "unknown_task_timeout": 0, "retries": 0, "max_payload": 1, "retention": 0,
}


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` already is of type ``hint`` (then pydantic, ~50 ms to import, is not needed:
    a worker started with typed flags and no environment never imports it)."""
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return any(_fits(value, h) for h in get_args(hint))
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in get_args(hint))
    if origin is list:
        (item,) = get_args(hint)
        return type(value) is list and all(_fits(v, item) for v in value)
    if hint is type(None):
        return value is None
    return type(value) is hint or (hint is float and type(value) is int)


def _convert(name: str, value: Any, source: str) -> Any:
    if name not in _FIELDS:
        raise ConfigError(f"unknown setting {name!r} (from {source}); known: {', '.join(sorted(_FIELDS))}")
    if isinstance(value, str) and name == "queues":
        value = [q.strip() for q in value.split(",") if q.strip()] or None
    elif isinstance(value, str) and value.strip().lower() in ("", "none") and "None" in str(_HINTS[name]):
        value = None
    if _fits(value, _HINTS[name]):
        converted = float(value) if _HINTS[name] is float else value
    else:
        from pydantic import TypeAdapter, ValidationError

        adapter = _ADAPTERS.get(name)
        if adapter is None:
            adapter = _ADAPTERS[name] = TypeAdapter(_HINTS[name])
        try:
            converted = adapter.validate_python(value)
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise ConfigError(f"bad value {value!r} for setting {name!r} (from {source}): {msg}") from None
    low = _MINIMUM.get(name)
    if low is not None and converted is not None and converted < low:
        raise ConfigError(f"bad value {value!r} for setting {name!r} (from {source}): must be >= {low}")
    if name == "lease" and converted <= 0:
        raise ConfigError(f"bad value {value!r} for setting {name!r} (from {source}): must be > 0")
    return converted


def _file_settings(folder: Path) -> tuple[dict[str, Any], str | None]:
    own = folder / "conveyor.toml"
    project = folder / "pyproject.toml"
    try:
        if own.is_file():
            return tomllib.loads(own.read_text()), str(own)
        if project.is_file():
            table = tomllib.loads(project.read_text()).get("tool", {}).get("conveyor")
            if table is not None:
                return dict(table), f"{project} [tool.conveyor]"
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot read settings file: {exc}") from None
    return {}, None


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    folder: str | Path | None = None,
) -> Settings:
    """Build the settings from defaults, the settings file, the environment and ``overrides``."""
    env = os.environ if env is None else env
    settings = Settings()
    found, where = _file_settings(Path(folder or os.getcwd()))
    if found:
        settings = settings.replace(where or "file", **{k.replace("-", "_"): v for k, v in found.items()})
    for name in _FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in env:
            settings = settings.replace(f"env {key}", **{name: env[key]})
    if overrides:
        settings = settings.replace("argument", **overrides)
    return settings
