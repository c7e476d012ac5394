"""Property-based requests built from the API's own OpenAPI document (schemathesis): whatever
the input, no endpoint answers 500, and every answer is the status and shape it documents."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from app import registry
from app.serve.app import create_app
from app.settings import Settings


@pytest.fixture
def api_schema(engine: Engine, make_settings: Callable[..., Settings]) -> Any:
    # Open mode (no token) on a loopback name: every caller is an admin, so every endpoint is reached.
    app = create_app(make_settings(), engine, registry.all_pipelines())
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_input_makes_the_api_fail(api_schema: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 20

    @given(case=st.one_of(*(operation.as_strategy() for operation in operations)))
    @settings(
        max_examples=600,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,
    )
    def check(case: Any) -> None:
        response = case.call(headers={"Host": "127.0.0.1"})
        assert response.status_code < 500, (case.method, case.path, response.text[:300])
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"} and "\n" not in body["error"], (case.method, case.path, body)

    check()
