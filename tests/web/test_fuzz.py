"""Fuzzing the HTTP API from its own OpenAPI document (Schemathesis): every operation, with
generated valid and invalid input, against the real WSGI app over a SQLite store with registered
tasks, authenticated with the bearer token. No input may cause a 5xx, and every answer must match
the document (status code, content type, body schema, headers).

``GET /api/events`` is left out: it is an endless stream (tests/web/test_events.py covers it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks
from schemathesis.openapi import from_wsgi
from web_support import BEARER, TOKEN, make_app

from conveyor.web import create_app
from conveyor.web.openapi import documented, openapi_path
from conveyor.web.routes import ROUTES

CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance]
# The WSGI transport does not decode gzip (the server compresses for clients that accept it).
HEADERS = {**BEARER, "Accept-Encoding": "identity"}
# Examples per test; raise it for a longer hunt (CONVEYOR_FUZZ_EXAMPLES=3000 found nothing more).
EXAMPLES = int(os.environ.get("CONVEYOR_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
OPERATIONS = [(openapi_path(r.rule), r.method) for r in ROUTES if documented(r) and r.endpoint != "api_events"]


@pytest.fixture
def api_schema(tmp_path: Path) -> Iterator[Any]:
    app = make_app(f"sqlite:///{tmp_path}/fuzz.db")
    app.open()
    # A few jobs in several states for the fuzzer's ids and filters to meet.
    for i in range(3):
        app.tasks["tests.add"].enqueue(i)
    app.tasks["tests.echo"].options(delay=3600).enqueue("later")
    web = create_app(app, token=TOKEN)
    try:
        yield from_wsgi("/api/openapi.json", web, headers=BEARER)
    finally:
        web.close()
        app.close()


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_no_input_breaks_the_api(api_schema: Any, path: str, method: str, mode: str) -> None:
    operation = api_schema[path][method]

    @FUZZ
    @given(case=operation.as_strategy(GenerationMode(mode)))
    def run(case: Any) -> None:
        case.call_and_validate(headers=HEADERS, checks=CHECKS)

    run()


FLOATS = st.floats(allow_nan=False, allow_infinity=False)  # what JSON can carry
JSON = st.recursive(st.none() | st.booleans() | st.integers() | FLOATS | st.text(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=6)
ARGUMENTS = st.one_of(st.lists(st.integers(), max_size=3), st.lists(st.text(max_size=20), max_size=2),
                      st.lists(JSON, max_size=3), JSON)
FITTING = st.one_of(
    st.builds(lambda a, b: {"task": "tests.add", "args": [a, b]}, st.integers(), st.integers()),
    st.builds(lambda text, queue: {"task": "tests.echo", "kwargs": {"text": text}, "queue": queue},
              st.text(max_size=50), st.text(min_size=1, max_size=30)))
ANYTHING = st.fixed_dictionaries(
    {"task": st.sampled_from(["tests.add", "tests.echo", "<script>alert(1)</script>"])},
    optional={"args": ARGUMENTS,
              "kwargs": st.dictionaries(st.sampled_from(["a", "b", "text", "other"]), JSON, max_size=3) | JSON,
              "queue": st.text(max_size=30), "priority": st.integers() | JSON,
              "delay": FLOATS | JSON,
              "key": st.sampled_from(["k1", "k2"]) | st.text(max_size=30) | JSON})
ENQUEUE_BODIES = FITTING | ANYTHING


def test_any_arguments_to_registered_tasks(api_schema: Any) -> None:
    """Enqueue of registered tasks (not only unknown names) with arguments that fit their
    signatures or not, and options of every JSON type."""
    operation = api_schema["/api/jobs"]["POST"]
    answers: set[int] = set()

    @FUZZ
    @given(case=ENQUEUE_BODIES.flatmap(lambda body: operation.as_strategy(body=body)))
    def run(case: Any) -> None:
        answers.add(case.call_and_validate(headers=HEADERS, checks=CHECKS).status_code)

    run()
    assert {201, 422} <= answers  # it got past the validation, and was stopped by it
