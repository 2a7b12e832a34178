"""Reads need a token too: the read-only viewer token or the operator token, as a Bearer header or (GET
only, for the dashboard's EventSource and images) the ``access_token`` query parameter. Health needs none;
the viewer token cannot run a verb; no CORS headers unless origins are configured."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api_fixtures import AUTH, TOKEN
from api_fixtures import api_database, api_db_url, api_settings, service, stored  # noqa: F401  (fixtures)
from server.api.main import create_app

pytest_plugins = ["db_fixtures"]
VIEWER = "viewer-secret"


def test_reads_need_the_viewer_or_operator_token(api_settings, api_database, service, stored):
    app = create_app(api_settings, service, database=api_database, operator_token=TOKEN, viewer_token=VIEWER)
    with TestClient(app) as c:
        assert c.get("/api/health").status_code == 200  # no token
        path = f"/api/sessions/{stored.invariance}"
        for url in ("/api/sessions", path, f"{path}/events", f"{path}/generations"):
            r = c.get(url)
            assert r.status_code == 401 and r.json()["detail"].startswith("read token required"), url
            assert r.headers["www-authenticate"] == "Bearer"
            assert c.get(url, headers={"Authorization": "Bearer nope"}).json() == {"detail": "wrong token"}
            assert c.get(url, headers={"Authorization": f"Bearer {VIEWER}"}).status_code == 200, url
            assert c.get(url, headers=AUTH).status_code == 200, url
            assert c.get(url, params={"access_token": VIEWER}).status_code == 200, url
        # the viewer token reads, it does not act; a token in the query does not act either
        r = c.post(f"{path}/stop", headers={"Authorization": f"Bearer {VIEWER}"})
        assert (r.status_code, r.json()["detail"]) == (401, "wrong operator token")
        assert c.post(f"{path}/stop", params={"access_token": TOKEN}).status_code == 401
        # CORS is closed by default: a cross-site request gets no Access-Control-Allow-Origin
        r = c.get("/api/sessions", headers=AUTH | {"Origin": "http://evil.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_tokens_and_cors_origins_come_from_the_settings(api_settings, api_database, stored):
    settings = api_settings.model_copy(update={"operator_token": None, "viewer_token": None,
                                               "cors_origins": ["http://lab.example"]})
    from pydantic import SecretStr

    settings = settings.model_copy(update={"viewer_token": SecretStr(VIEWER), "operator_token": SecretStr("op")})
    with TestClient(create_app(settings, database=api_database)) as c:
        assert c.get("/api/sessions", params={"access_token": VIEWER}).status_code == 200
        assert c.get("/api/sessions", headers={"Authorization": "Bearer op"}).status_code == 200
        r = c.get("/api/sessions", headers={"Authorization": "Bearer op", "Origin": "http://lab.example"})
        assert r.headers["access-control-allow-origin"] == "http://lab.example"
