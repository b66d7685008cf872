"""Schemathesis against the router's own OpenAPI schema, on the real Serve app with a tiny model.

Positive and negative generation, the examples, coverage and fuzzing phases (stateful off),
max_tokens clamped so valid requests finish quickly. Every response must be below 500, and
every 4xx an OpenAI error body. Deterministic: CI runs the same cases every time."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import schemathesis
from schemathesis.config import SchemathesisConfig

from tests.serve.conftest import ServeApp

MAX_TOKENS = 4
MAX_EXAMPLES = 120  # per operation and phase; >= 500 cases in all
SEEN: list[tuple[str, int]] = []  # (operation, status code)
PARAMS: Counter[str] = Counter()  # the fields 400s named


def _clamp(body: Any) -> None:
    """Keep generation short: every valid request then takes a few engine steps. Every other case
    names the served model, so valid bodies reach the engine (the rest test `model_not_found`)."""
    if isinstance(body, dict):
        if isinstance(body.get("model"), str) and len(SEEN) % 2 == 0:
            body["model"] = "tiny"
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS):
                body[key] = MAX_TOKENS
        if isinstance(body.get("n"), int) and not isinstance(body["n"], bool) and body["n"] > 4:
            body["n"] = 4


def _check(case: Any) -> None:
    _clamp(case.body)
    response = case.call(timeout=60)
    SEEN.append((case.operation.label, response.status_code))
    if response.status_code == 400:
        PARAMS[str(response.json()["error"]["param"]).split(".")[0]] += 1
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
    if 400 <= response.status_code < 500:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str), response.text


def test_no_server_errors_and_every_4xx_is_an_openai_error(serve_app: ServeApp) -> None:
    # schemathesis' own pytest plugin (`from_fixture(...).parametrize()`) needs pytest < 9; its test
    # builder, which runs the same phases per operation, is driven directly here
    from schemathesis.pytest.lazy import get_all_tests

    config = SchemathesisConfig.from_dict({
        "seed": 11,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "no-shrink": True,
                       "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "request-timeout": 60,
    })
    schema = schemathesis.openapi.from_url(f"{serve_app.base_url}/openapi.json", config=config, timeout=30)
    started = time.monotonic()
    operations = []
    for result in get_all_tests(schema=schema, test_func=_check, settings=None, given_kwargs={}):
        operation, run = result.ok()
        operations.append(operation.label)
        run()
    statuses = Counter(status for _, status in SEEN)
    per_operation = Counter(label for label, _ in SEEN)
    print(f"schemathesis: {len(SEEN)} cases in {time.monotonic() - started:.1f} s, statuses {dict(sorted(statuses.items()))}, "
          f"per operation {dict(per_operation)}, 400s by field {dict(PARAMS.most_common(8))}")
    assert "POST /v1/chat/completions" in operations and "POST /v1/completions" in operations
    assert not [s for s in statuses if s >= 500]
    assert len(SEEN) >= 500, f"only {len(SEEN)} cases ran"
