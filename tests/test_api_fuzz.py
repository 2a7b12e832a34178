"""OpenAPI fuzz of the HTTP API (schemathesis, bounded examples): no input, with or without the token,
makes the server answer 5xx."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from api_fixtures import AUTH, TOKEN  # noqa: E402
from api_fixtures import api_database, api_db_url, api_settings, stored  # noqa: E402,F401  (fixtures)

pytest_plugins = ["db_fixtures"]


@pytest.fixture
def api_schema(api_settings, api_database, stored, tmp_path):
    from server.api.main import create_app
    from server.service import SessionService

    service = SessionService(api_database, bind="tcp://127.0.0.1:*", reference_dir=tmp_path / "references")
    app = create_app(api_settings, service, database=api_database, operator_token=TOKEN)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    service.close()


def test_no_input_gives_a_5xx(api_schema):
    from hypothesis import given

    checked = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            for headers in (AUTH, {}):
                response = case.call(headers=headers)
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")

        fuzz()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert len(checked) >= 10, checked  # every route of the API was fuzzed
