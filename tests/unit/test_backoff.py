"""Backoff: exponential, capped, with jitter that only ever shortens the wait."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor import Backoff
from conveyor.errors import ConfigError


def test_exponential_without_jitter() -> None:
    backoff = Backoff(base=1, factor=2, cap=1000, jitter=0)
    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 32, 64]


def test_capped() -> None:
    backoff = Backoff(base=3, factor=10, cap=500, jitter=0)
    assert [backoff.delay(n) for n in range(1, 6)] == [3, 30, 300, 500, 500]


def test_defaults() -> None:
    backoff = Backoff()
    assert (backoff.base, backoff.factor, backoff.cap, backoff.jitter) == (1.0, 2.0, 3600.0, 0.5)
    assert 0.5 <= backoff.delay(1) <= 1.0


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    assert Backoff(jitter=0).delay(100_000) == 3600.0
    assert Backoff(base=0, jitter=0).delay(100_000) == 0.0


@pytest.mark.parametrize(
    "kwargs", [{"base": -1}, {"cap": -1}, {"factor": 0.5}, {"jitter": 1.5}, {"jitter": -0.1}]
)
def test_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="backoff"):
        Backoff(**kwargs)


@settings(max_examples=300, deadline=None)
@given(
    base=st.floats(0, 1e4, allow_nan=False),
    factor=st.floats(1, 100, allow_nan=False),
    cap=st.floats(0, 1e6, allow_nan=False),
    jitter=st.floats(0, 1, allow_nan=False),
    attempt=st.integers(1, 100_000),
)
def test_jitter_stays_within_bounds(base: float, factor: float, cap: float, jitter: float, attempt: int) -> None:
    backoff = Backoff(base=base, factor=factor, cap=cap, jitter=jitter)
    try:
        raw = min(cap, base * factor ** (attempt - 1))
    except OverflowError:
        raw = cap if base > 0 else 0.0
    delay = backoff.delay(attempt)
    assert raw * (1 - jitter) * (1 - 1e-9) <= delay <= raw * (1 + 1e-9)
    assert 0 <= delay <= cap


@settings(max_examples=200, deadline=None)
@given(
    base=st.floats(0.001, 100),
    factor=st.floats(1, 5),
    cap=st.floats(0.001, 1e5),
    attempts=st.lists(st.integers(1, 60), min_size=2, max_size=10),
)
def test_without_jitter_never_shrinks_as_attempts_grow(base: float, factor: float, cap: float,
                                                       attempts: list[int]) -> None:
    backoff = Backoff(base=base, factor=factor, cap=cap, jitter=0)
    delays = [backoff.delay(n) for n in sorted(attempts)]
    assert delays == sorted(delays)
    assert delays[-1] <= cap
