"""schemathesis against the service's own OpenAPI document (docs/payload.md).

The document is read from ``GET /openapi.json`` of the app under test, and
every documented operation gets a bounded number of generated requests,
valid ones and invalid ones, sent through the WSGI app with real Redis and a
migrated PostgreSQL schema behind it. Every response must be no 5xx
(nothing a client sends may produce one), carry a documented status code and
content type, and match the documented response schema.

The schema is loaded inside the test, from the app built on the test's
fixtures, and each operation runs under its own ``hypothesis.given``
(schemathesis' lazy ``from_fixture`` loader does not work with pytest 9.2).
Every operation is tried even when an earlier one fails; the failures are
reported together, each with its minimal failing request.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from payload_stats.web.app import create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 25  # per operation and generation mode


def test_every_operation_answers_as_documented(config, pool):
    app = create_app(config)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /stats",
        "GET /stats",
        "POST /stats/batch",
        "GET /stats/live",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    }

    failures = []
    for operation in operations:
        inputs = (
            operation.path_parameters,
            operation.query,
            operation.headers,
            operation.cookies,
            operation.body,
        )
        for mode in GenerationMode:
            if mode is GenerationMode.NEGATIVE and not any(len(i) for i in inputs):
                continue  # nothing to make invalid (GET /healthz)

            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                case.call_and_validate(checks=CHECKS)

            try:
                check()
            # A group of check failures is a BaseExceptionGroup: named explicitly.
            except (Exception, FailureGroup) as exc:  # every operation is reported
                failures.append(f"{operation.label} ({mode.value}):\n{exc}")
    assert not failures, "\n\n".join(failures)
