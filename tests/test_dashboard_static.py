"""The dashboard is plain files served by the app: no build step and nothing fetched from elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api_fixtures import api_database, api_db_url, api_settings  # noqa: F401  (fixtures)

pytest_plugins = ["db_fixtures"]

DASHBOARD = Path(__file__).resolve().parents[1] / "server" / "dashboard"
FILES = {"index.html": "text/html", "app.js": "javascript", "plot.js": "javascript", "style.css": "text/css"}


@pytest.fixture(scope="module")
def client(api_settings, api_database):
    from server.api.main import create_app

    with TestClient(create_app(api_settings, database=api_database, operator_token="t")) as c:
        yield c


def test_root_serves_the_dashboard_page(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.text == (DASHBOARD / "index.html").read_text()
    scripts = re.findall(r'<script src="([^"]+)"', r.text)
    styles = re.findall(r'<link rel="stylesheet" href="([^"]+)"', r.text)
    assert scripts == ["/dashboard/plot.js", "/dashboard/app.js"] and styles == ["/dashboard/style.css"]


@pytest.mark.parametrize("name, media", FILES.items())
def test_dashboard_files_are_served(client, name, media):
    r = client.get(f"/dashboard/{name}")
    assert r.status_code == 200 and media in r.headers["content-type"]
    assert r.content == (DASHBOARD / name).read_bytes()


def test_nothing_is_loaded_from_another_host():
    for name in FILES:
        text = (DASHBOARD / name).read_text()
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert urls == set(), f"{name} loads {urls}"
        assert not re.search(r"""(src|href)=["']//""", text), name


def test_dashboard_reads_only_routes_the_api_has(client):
    """Every /api path the JavaScript fetches is a route in the OpenAPI schema."""
    paths = set(client.get("/openapi.json").json()["paths"])
    pattern = {p: re.compile("^" + re.sub(r"\\\{[a-z0-9_]+\\\}", "[^/]+", re.escape(p)) + "$") for p in paths}
    app_js = (DASHBOARD / "app.js").read_text()
    fetched = re.findall(r'api\(`([^`?]+)', app_js) + re.findall(r'api\("([^"?]+)', app_js)
    assert len(fetched) >= 7
    for f in fetched:
        for verb in ("start", "pause", "resume", "stop") if "${verb}" in f else ("",):
            concrete = "/api" + re.sub(r"\$\{[^}]+\}", "x", f.replace("${verb}", verb))
            assert any(p.match(concrete) for p in pattern.values()), concrete
