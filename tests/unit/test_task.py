"""Registering tasks with ``@app.task``."""

from __future__ import annotations

import pytest

from conveyor import Conveyor, Task, UnknownTask
from conveyor.errors import ConfigError


def test_bare_decorator_registers_under_module_and_qualname(app: Conveyor) -> None:
    @app.task
    def transcode(path: str, fmt: str = "mp4") -> dict[str, str]:
        """Transcode a file."""
        return {"out": f"{path}.{fmt}"}

    assert isinstance(transcode, Task)
    expected = f"{__name__}.test_bare_decorator_registers_under_module_and_qualname.<locals>.transcode"
    assert transcode.name == expected
    assert app.tasks == {expected: transcode}
    assert app.get_task(expected) is transcode
    assert transcode.queue == "default"
    assert transcode.retries == app.settings.retries == 3
    assert transcode.timeout is None
    assert transcode.priority == 0
    assert transcode.__doc__ == "Transcode a file."
    # Calling the task runs the function here, as a plain call.
    assert transcode("in.mov", fmt="webm") == {"out": "in.mov.webm"}


def test_decorator_with_options(app: Conveyor) -> None:
    @app.task(name="media.transcode", queue="media", retries=5, timeout=30, priority=7)
    def transcode(path: str) -> str:
        return path

    assert transcode.name == "media.transcode"
    assert app.get_task("media.transcode") is transcode
    assert (transcode.queue, transcode.retries, transcode.timeout, transcode.priority) == ("media", 5, 30, 7)
    assert app.queues == ["default", "media"]


def test_decorator_with_empty_parentheses(app: Conveyor) -> None:
    @app.task()
    def noop() -> None:
        pass

    assert noop.name.endswith(".noop")
    assert noop.queue == "default"


def test_retries_default_comes_from_settings() -> None:
    app = Conveyor("memory://", retries=0)

    @app.task
    def once() -> None:
        pass

    assert once.retries == 0


def test_async_function_is_marked_async(app: Conveyor) -> None:
    @app.task
    async def fetch(url: str) -> int:
        return len(url)

    @app.task
    def plain() -> None:
        pass

    assert fetch.is_async
    assert not plain.is_async


def test_duplicate_name_for_a_different_function_raises(app: Conveyor) -> None:
    @app.task(name="shared")
    def first() -> None:
        pass

    def second() -> None:
        pass

    with pytest.raises(ConfigError, match="'shared'"):
        app.task(name="shared")(second)
    assert app.tasks["shared"] is first


def test_registering_the_same_function_twice_is_allowed(app: Conveyor) -> None:
    def job() -> None:
        pass

    app.task(name="again")(job)
    again = app.task(name="again")(job)
    assert app.tasks == {"again": again}


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"retries": -1}, "retries"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -5}, "timeout"),
        ({"queue": ""}, "queue"),
        ({"backoff": -1}, "backoff"),
        ({"backoff": "fast"}, "backoff"),
    ],
)
def test_bad_options_raise_config_error(app: Conveyor, options: dict[str, object], words: str) -> None:
    def job() -> None:
        pass

    with pytest.raises(ConfigError, match=words):
        app.task(**options)(job)  # type: ignore[call-overload]
    assert app.tasks == {}


def test_unknown_task_name(app: Conveyor) -> None:
    with pytest.raises(UnknownTask, match="'nope'") as caught:
        app.get_task("nope")
    assert caught.value.name == "nope"
    assert isinstance(caught.value, LookupError)


def test_unresolvable_type_hint_is_reported_at_first_enqueue(app: Conveyor) -> None:
    @app.task(name="broken")
    def broken(x: NotDefinedAnywhere) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    with pytest.raises(ConfigError, match="'broken'"):
        broken.enqueue(1)
    assert app.broker.counts() == {}


def test_app_repr_and_queues(app: Conveyor) -> None:
    assert repr(app) == "<Conveyor memory:// tasks=0>"
    assert app.queues == ["default"]
