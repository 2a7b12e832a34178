"""The operator's side of the HTTP API: the token rule, create / start / pause / resume / stop through a real
SessionService on a real PostgreSQL, the one-line 400/401/404/422 answers, and that a refused request
changes nothing stored (row counts and session rows compared before and after)."""

from __future__ import annotations

import logging
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient

from waiting import wait_for

from api_fixtures import AUTH, CREATE, TOKEN, read_token, row_counts, session_rows
from api_fixtures import api_database, api_db_url, api_settings, client, service, stored  # noqa: F401  (fixtures)

pytest_plugins = ["db_fixtures"]

UNKNOWN = uuid.UUID("00000000-0000-4000-8000-000000000000")
VERBS = ("start", "pause", "resume", "stop")


class Unchanged:
    """``with Unchanged(db):`` fails if the block changed any row count or any session's status/timestamps."""

    def __init__(self, database):
        self.database = database

    def __enter__(self):
        self.before = row_counts(self.database), session_rows(self.database)

    def __exit__(self, *exc):
        if exc[0] is None:
            assert (row_counts(self.database), session_rows(self.database)) == self.before


def create(client, **changes) -> dict:
    r = client.post("/api/sessions", json=CREATE | changes, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()


# --- the token rule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, detail",
    [
        ({}, "operator token required (Authorization: Bearer <token>)"),
        ({"Authorization": "Bearer nope"}, "wrong operator token"),
        ({"Authorization": f"Basic {TOKEN}"}, "operator token required (Authorization: Bearer <token>)"),
        ({"Authorization": TOKEN}, "operator token required (Authorization: Bearer <token>)"),
    ],
)
def test_every_verb_needs_the_token(client, api_database, headers, detail):
    sid = create(client)["id"]
    requests = [("/api/sessions", CREATE)] + [(f"/api/sessions/{sid}/{v}", None) for v in VERBS]
    with Unchanged(api_database):
        for path, body in requests:
            r = client.post(path, json=body, headers=headers)
            assert r.status_code == 401, path
            assert r.json() == {"detail": detail}
            assert r.headers["www-authenticate"] == "Bearer"


def test_token_is_checked_before_the_body_and_the_session(client, api_database):
    with Unchanged(api_database):
        assert client.post("/api/sessions", json={"operator": ""}).status_code == 401
        assert client.post(f"/api/sessions/{UNKNOWN}/start").status_code == 401


def test_token_comes_from_the_environment(api_settings, api_database, service, monkeypatch):
    from server.api.main import create_app

    from server.settings import Settings

    monkeypatch.setenv("SNSLAB_OPERATOR_TOKEN", "from-env")
    settings = Settings(database_url=api_settings.database_url, data_dir=api_settings.data_dir)
    assert "from-env" not in repr(settings)  # a SecretStr: never printed with the settings
    with TestClient(create_app(settings, service, database=api_database)) as c:
        assert c.post("/api/sessions", json=CREATE, headers=AUTH).status_code == 401
        r = c.post("/api/sessions", json=CREATE, headers={"Authorization": "Bearer from-env"})
        assert r.status_code == 201


def test_without_a_token_setting_a_random_one_is_made_and_logged(api_settings, api_database, monkeypatch, caplog):
    from server.api.main import create_app

    monkeypatch.delenv("SNSLAB_OPERATOR_TOKEN", raising=False)
    with caplog.at_level(logging.WARNING, logger="snslab.api"):
        a = create_app(api_settings, database=api_database).state.operator_token.get_secret_value()
        b = create_app(api_settings, database=api_database).state.operator_token.get_secret_value()
    assert a != b and len(a) >= 20
    assert a in caplog.text and "SNSLAB_OPERATOR_TOKEN" in caplog.text


# --- create ----------------------------------------------------------------------------------------------


def test_create_stores_a_paused_session_with_its_units(client, api_database):
    before = row_counts(api_database)
    d = create(client)
    after = row_counts(api_database)
    assert {t: after[t] - before[t] for t in after} == {
        "sessions": 1, "units": 2, "generations": 0, "stimuli": 0, "presentations": 0, "responses": 0,
        "scores": 0, "events": 2}
    assert (d["status"], d["probe"], d["mode"], d["generations_budget"]) == ("paused", "maximize", "simulated", 3)
    assert [u["label"] for u in d["units"]] == ["sim:0", "sim:1"]
    assert (d["operator"], d["subject_id"], d["rig"]) == ("ana", "m01", "rig-test")
    assert d["config"]["session"]["on_ms"] == 80 and d["config"]["probe"]["population"] == 8
    assert d["live"]["running_here"] is False and d["generations_done"] == 0
    events = client.get(f"/api/sessions/{d['id']}/events").json()
    # what the service did, and who asked (the operator token's holder, from the test client's address)
    assert [e["message"] for e in events] == ["created by ana", "create requested by operator token from testclient"]
    assert client.get(f"/api/sessions/{d['id']}").json()["status"] == "paused"


@pytest.mark.parametrize(
    "changes, detail",
    [
        ({"operator": None}, "body.operator: Input should be a valid string"),
        ({"subject_id": ""}, "body.subject_id: String should have at least 1 character"),
        ({"on_ms": 0}, "body.on_ms: Input should be greater than 0"),
        ({"units": []}, "body.units: List should have at least 1 item after validation, not 0"),
        ({"colour": "red"}, "body.colour: Extra inputs are not permitted"),
        ({"reference": {"source": "photo"}},
         "body.reference.source: Input should be 'maximize-session', 'image', 'code' or 'none'"),
    ],
)
def test_bad_body_is_422_naming_the_field(client, api_database, changes, detail):
    with Unchanged(api_database):
        r = client.post("/api/sessions", json=CREATE | changes, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["detail"] == detail
    assert r.json()["errors"][0]["loc"] == detail.split(":")[0].split(".")


def test_missing_field_and_broken_json_are_422(client, api_database):
    body = {k: v for k, v in CREATE.items() if k != "subject_id"}
    with Unchanged(api_database):
        r = client.post("/api/sessions", json=body, headers=AUTH)
        assert (r.status_code, r.json()["detail"]) == (422, "body.subject_id: Field required")
        r = client.post("/api/sessions", content=b"{not json", headers=AUTH | {"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"].startswith("body.1: JSON decode error")


@pytest.mark.parametrize(
    "changes, detail",
    [
        ({"probe": CREATE["probe"] | {"population": 2}}, "population: Input should be greater than or equal to 4"),
        ({"probe": CREATE["probe"] | {"generator": {"name": "vqgan"}}}, "generator"),
        ({"probe": CREATE["probe"] | {"mode": "invariance"}},
         "reference.source: the invariance probe needs a reference (allowed: maximize-session, image, code)"),
        ({"target_units": ["sim:7"]}, "target_units: 'sim:7' is not among units (sim:0, sim:1)"),
        ({"probe": CREATE["probe"] | {"mode": "invariance"}, "reference": {"source": "image", "path": "/no/such.png"}},
         "reference.path: file not found: /no/such.png"),
        ({"probe": CREATE["probe"] | {"mode": "invariance"},
          "reference": {"source": "maximize-session", "session_id": str(UNKNOWN)}},
         f"reference.session_id: no session {UNKNOWN}"),
    ],
)
def test_refused_create_is_400_with_one_line_and_stores_nothing(client, api_database, changes, detail):
    with Unchanged(api_database):
        r = client.post("/api/sessions", json=CREATE | changes, headers=AUTH)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"detail"} and "\n" not in r.json()["detail"]
    assert r.json()["detail"].startswith(detail)


def test_reference_from_an_earlier_maximize_session_a_code_or_an_image(client, service, stored, tmp_path):
    from PIL import Image

    probe = {"mode": "invariance", "population": 8, "generations": 3, "stages": ["pixel"],
             "generator": {"name": "dct", "code_size": 64, "image_size": 16, "channels": 1}}
    ref = create(client, probe=probe, reference={"source": "maximize-session", "session_id": str(stored.maximize)})
    assert ref["probe"] == "invariance" and ref["stages"] == ["pixel"]
    assert ref["config"]["session"]["reference"]["session_id"] == str(stored.maximize)

    code = service.best_code(stored.maximize)
    assert code.shape == (64,)
    np.save(tmp_path / "ref.npy", code)
    assert create(client, probe=probe, reference={"source": "code", "path": str(tmp_path / "ref.npy")})["probe"] \
        == "invariance"
    Image.fromarray(np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))).save(tmp_path / "ref.png")
    d = create(client, probe=probe, reference={"source": "image", "path": str(tmp_path / "ref.png")})
    assert d["config"]["session"]["reference"] == {"source": "image", "session_id": None,
                                                   "path": str(tmp_path / "ref.png")}


# --- start / pause / resume / stop -------------------------------------------------------------------------


def test_lifecycle_start_pause_resume_stop(client, service, api_database):
    repo = api_database.repository()
    sid = create(client)["id"]
    r = client.post(f"/api/sessions/{sid}/start", headers=AUTH)
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["live"]["running_here"]) == ("running", True)
    # the live loop proposes generation 0 (8 candidates) and dispatches it to nobody: no clients yet
    assert wait_for(lambda: repo.session_summary(uuid.UUID(sid)).n_generations == 1)
    d = client.get(f"/api/sessions/{sid}").json()
    assert (d["generations_started"], d["generations_done"], d["presentations"]) == (1, 0, 8)
    assert d["live"]["clients"] == [] and d["live"]["paused"] is False
    assert wait_for(lambda: client.get(f"/api/sessions/{sid}").json()["live"]["dispatched"] == 8)
    assert len(client.get(f"/api/sessions/{sid}/generations/0/images").json()) == 8
    assert client.post(f"/api/sessions/{sid}/start", headers=AUTH).json()["status"] == "running"  # idempotent

    r = client.post(f"/api/sessions/{sid}/pause", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "paused"
    assert wait_for(lambda: client.get(f"/api/sessions/{sid}").json()["live"]["paused"] is True)
    r = client.post(f"/api/sessions/{sid}/resume", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "running"
    assert wait_for(lambda: client.get(f"/api/sessions/{sid}").json()["live"]["paused"] is False)

    r = client.post(f"/api/sessions/{sid}/stop", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["status"] == "aborted" and r.json()["finished_at"] is not None
    assert wait_for(lambda: not client.get(f"/api/sessions/{sid}").json()["live"]["running_here"])
    assert repo.session_summary(uuid.UUID(sid)).status == "aborted"

    with Unchanged(api_database):
        r = client.post(f"/api/sessions/{sid}/start", headers=AUTH)
        assert (r.status_code, r.json()) == (400, {"detail": f"session: {sid} is aborted; it cannot be started again"})
        for verb in ("pause", "resume"):
            r = client.post(f"/api/sessions/{sid}/{verb}", headers=AUTH)
            assert (r.status_code, r.json()) == (400, {"detail": f"session: {sid} is not running on this server"})
        assert client.post(f"/api/sessions/{sid}/stop", headers=AUTH).json()["status"] == "aborted"


def test_a_second_session_cannot_start_while_one_runs(client, service, api_database):
    first, second = create(client)["id"], create(client)["id"]
    assert client.post(f"/api/sessions/{first}/start", headers=AUTH).status_code == 200
    repo = api_database.repository()
    assert wait_for(lambda: repo.session_summary(uuid.UUID(first)).n_generations == 1)
    with Unchanged(api_database):
        r = client.post(f"/api/sessions/{second}/start", headers=AUTH)
    assert (r.status_code, r.json()) == (400, {"detail": f"session: {first} is running; stop it first"})
    assert client.post(f"/api/sessions/{first}/stop", headers=AUTH).status_code == 200


def test_pause_of_a_session_that_is_not_running_is_400_and_changes_nothing(client, api_database):
    sid = create(client)["id"]
    with Unchanged(api_database):
        for verb in ("pause", "resume"):
            r = client.post(f"/api/sessions/{sid}/{verb}", headers=AUTH)
            assert (r.status_code, r.json()) == (400, {"detail": f"session: {sid} is not running on this server"})


@pytest.mark.parametrize("verb", VERBS)
def test_unknown_session_is_404_for_every_verb(client, api_database, verb):
    with Unchanged(api_database):
        r = client.post(f"/api/sessions/{UNKNOWN}/{verb}", headers=AUTH)
    assert (r.status_code, r.json()) == (404, {"detail": f"no session {UNKNOWN}"})
    r = client.post(f"/api/sessions/not-a-uuid/{verb}", headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"].startswith("path.session_id: ")


def test_read_only_server_answers_503_to_verbs(api_settings, api_database, stored):
    from server.api.main import create_app

    with TestClient(create_app(api_settings, database=api_database, operator_token=TOKEN)) as c:
        c.auth = read_token
        assert c.get("/api/health").json()["service"] is False
        assert c.get(f"/api/sessions/{stored.invariance}").status_code == 200
        with Unchanged(api_database):
            assert c.post(f"/api/sessions/{stored.invariance}/stop").status_code == 401
            r = c.post(f"/api/sessions/{stored.invariance}/stop", headers=AUTH)
            assert (r.status_code, r.json()) == (503, {"detail": "this server has no session service (read-only)"})
            assert c.post("/api/sessions", json=CREATE, headers=AUTH).status_code == 503
