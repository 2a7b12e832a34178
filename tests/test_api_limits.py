"""Limits and validation at creation: every field that sizes memory or time has an upper bound, the memory
a generation needs is checked against the machine, reference files come only from the reference folder
(uploads), and every refusal is a one-line 4xx naming the field, never a 500."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api_fixtures import AUTH, CREATE, TOKEN, row_counts
from api_fixtures import api_database, api_db_url, api_settings  # noqa: F401  (fixtures)
from server.api.main import create_app
from server.service import SessionService

pytest_plugins = ["db_fixtures"]


@pytest.fixture
def rig(api_settings, api_database, tmp_path):
    service = SessionService(api_database, bind="tcp://127.0.0.1:*", reference_dir=tmp_path / "references")
    with TestClient(create_app(api_settings, service, database=api_database, operator_token=TOKEN)) as c:
        yield c, service
    service.close()


def _probe(**changes):
    probe = json.loads(json.dumps(CREATE["probe"]))
    gen = changes.pop("generator", {})
    probe["generator"].update(gen)
    return CREATE | {"probe": probe | changes}


@pytest.mark.parametrize("body, field", [
    (_probe(generator={"image_size": 20000}), "probe.generator.image_size"),
    (_probe(generator={"code_size": 10**7}), "probe.generator.code_size"),
    (_probe(generations=10**9), "generations"),
    (_probe(seed=2**70), "seed"),
    (_probe(reference_repeats=10**6), "reference_repeats"),
    (_probe(population=10**6), "population"),
    (CREATE | {"units": [f"ch{i}#1" for i in range(5000)]}, "units"),
    (CREATE | {"response_window_ms": [200, 50]}, "response_window_ms"),
    (CREATE | {"response_window_ms": [0, 10**6]}, "response_window_ms"),
    (CREATE | {"on_ms": 10**9}, "on_ms"),
    (_probe(generator={"image_size": 512, "code_size": 65536}, optimizer={"name": "cma"}), "probe"),
])
def test_bounds_are_checked_at_creation(rig, api_database, body, field):
    client, _ = rig
    before = row_counts(api_database)
    r = client.post("/api/sessions", json=body, headers=AUTH)
    assert r.status_code in (400, 422), r.text
    detail = r.json()["detail"]
    assert field in detail and "\n" not in detail, detail
    assert row_counts(api_database) == before


@pytest.mark.parametrize("raw, field", [
    (json.dumps(CREATE)[:-1] + ', "on_ms": NaN}', "on_ms"),
    (json.dumps(CREATE)[:-1] + ', "response_window_ms": [50, Infinity]}', "response_window_ms"),
    (json.dumps(_probe(optimizer={"name": "sepcma", "sigma0": 12345.5})).replace("12345.5", "NaN"), "sigma0"),
])
def test_non_finite_numbers_are_refused_naming_the_field(rig, raw, field):
    client, _ = rig
    r = client.post("/api/sessions", content=raw, headers=AUTH | {"Content-Type": "application/json"})
    assert r.status_code in (400, 422) and field in r.json()["detail"], r.text


def test_a_text_plain_body_is_a_4xx(rig):
    client, _ = rig
    r = client.post("/api/sessions", content=json.dumps(CREATE), headers=AUTH | {"Content-Type": "text/plain"})
    assert 400 <= r.status_code < 500 and "\n" not in r.json()["detail"], r.text


def test_references_come_only_from_the_reference_folder(rig, tmp_path):
    client, service = rig
    probe = CREATE["probe"] | {"mode": "invariance", "stages": ["pixel"]}
    answers = set()
    for path in ("/etc/passwd", "../../etc/passwd", "missing.npy", str(tmp_path / "outside.npy")):
        np.save(tmp_path / "outside.npy", np.zeros(16))
        r = client.post("/api/sessions", headers=AUTH, json=CREATE | {
            "probe": probe, "reference": {"source": "code", "path": path}})
        assert r.status_code == 400, r.text
        answers.add(r.json()["detail"].replace(repr(path), "PATH"))
    assert len(answers) == 1 and next(iter(answers)).startswith("reference.path: no reference PATH")
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).normal(0, 0.5, 16))
    assert client.post("/api/references", params={"kind": "code"}, content=buf.getvalue()).status_code == 401
    bad = client.post("/api/references", params={"kind": "code"}, content=b"not npy", headers=AUTH)
    assert bad.status_code == 400 and bad.json()["detail"].startswith("body: not a .npy array")
    up = client.post("/api/references", params={"kind": "code"}, content=buf.getvalue(), headers=AUTH)
    assert up.status_code == 201 and (service.reference_dir / up.json()["path"]).is_file()
    r = client.post("/api/sessions", headers=AUTH, json=CREATE | {
        "probe": probe, "reference": {"source": "code", "path": up.json()["path"]}})
    assert r.status_code == 201, r.text
