"""The read side of the HTTP API against a real PostgreSQL holding a stored in-silico run: every number the
API reports is checked against the stored presentations, computed here from the session's history."""

from __future__ import annotations

import hashlib
import io
import uuid

import numpy as np
import pytest

from api_fixtures import INSILICO
from api_fixtures import api_database, api_db_url, api_settings, client, service, stored  # noqa: F401  (fixtures)

pytest_plugins = ["db_fixtures"]

GENS = INSILICO["generations"]
REFS = 4  # reference repeats per generation (ProbeConfig default)


@pytest.fixture(scope="module")
def history(stored, api_database):
    return api_database.repository().load_history(stored.invariance)


def test_health_names_the_database_without_its_password(client, api_database):
    r = client.get("/api/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["service"] is True
    assert body["database"] == api_database.masked_url
    assert body["wire"].startswith("tcp://127.0.0.1:")


def test_sessions_lists_both_phases_newest_first(client, stored):
    r = client.get("/api/sessions")
    assert r.status_code == 200
    rows = r.json()
    assert [s["id"] for s in rows] == [str(stored.invariance), str(stored.maximize)]
    inv, mx = rows
    assert (inv["probe"], inv["generations_done"], inv["generations_budget"]) == ("invariance", GENS, GENS)
    assert (mx["probe"], mx["generations_done"], mx["generations_budget"]) == ("maximize", 4, 4)
    assert inv["presentations"] == inv["presentations_answered"] == GENS * (INSILICO["population"] + REFS)
    assert mx["presentations"] == 4 * INSILICO["population"]
    assert inv["presentations_invalid"] == 1
    assert {s["status"] for s in rows} == {"completed"} and {s["rig"] for s in rows} == {"insilico"}
    assert [s["id"] for s in client.get("/api/sessions?limit=1").json()] == [str(stored.invariance)]


def test_session_detail_has_summary_units_stages_and_live_status(client, stored, history):
    r = client.get(f"/api/sessions/{stored.invariance}")
    assert r.status_code == 200
    d = r.json()
    assert d["status"] == "completed" and d["mode"] == "insilico" and d["probe"] == "invariance"
    assert d["seed"] == INSILICO["seed"] and d["stages"] == ["pixel"]
    assert d["units"] == [{"position": 0, "channel": 0, "unit": 0, "label": "complex-cell#0"}]
    assert d["generations_done"] == d["generations_started"] == GENS
    assert d["presentations_answered"] == int((history.counts[:, 0] >= 0).sum())
    assert d["config"]["phase"] == "invariance" and d["config"]["population"] == INSILICO["population"]
    assert d["live"] == {"running_here": False, "paused": None, "dispatched": None, "reports": None,
                         "counts": None, "boundary_ms": None, "last_error": None, "clients": []}
    assert d["best_fitness"] == pytest.approx(np.nanmax(history.fitness))


def test_generations_report_mean_and_best_response_of_valid_candidates(client, stored, history):
    r = client.get(f"/api/sessions/{stored.invariance}/generations")
    assert r.status_code == 200
    gens = r.json()
    assert [g["index"] for g in gens] == list(range(GENS))
    for g in gens:
        rows = (history.generation == g["index"]) & ~history.superseded
        cand = rows & (history.kind == "candidate") & (history.valid != False)  # noqa: E712 (None: not shown)
        ref = rows & (history.kind == "reference") & (history.valid != False)  # noqa: E712
        assert g["status"] == "completed"
        assert g["presentations"] == rows.sum() == INSILICO["population"] + REFS
        assert g["candidates"] == INSILICO["population"]
        assert g["mean_response"] == pytest.approx(history.counts[cand, 0].mean())
        assert g["best_response"] == history.counts[cand, 0].max()
        assert g["mean_reference_response"] == pytest.approx(history.counts[ref, 0].mean())
        assert g["front_size"] == int((rows & (history.front_index == 0)).sum())
        assert g["best_fitness"] == pytest.approx(np.nanmax(history.fitness[rows]))
        assert set(g["timings"]) >= {"ask_s", "tell_s"}
    assert sum(g["invalid"] for g in gens) == 1 and gens[-1]["invalid"] == 1


def test_front_lists_the_first_front_of_every_generation(client, stored, history):
    r = client.get(f"/api/sessions/{stored.invariance}/front")
    assert r.status_code == 200
    front = r.json()
    assert front["stages"] == ["pixel"]
    on_front = np.flatnonzero(history.front_index == 0)
    assert sorted(m["presentation_id"] for m in front["members"]) == sorted(history.presentation_id[on_front])
    by_id = {int(history.presentation_id[i]): i for i in on_front}
    for m in front["members"]:
        i = by_id[m["presentation_id"]]
        assert m["generation"] == history.generation[i] and m["response"] == history.counts[i, 0]
        assert m["distances"] == pytest.approx(history.distances[i]) and set(m["distances"]) == {"pixel", "unit"}
        assert m["image_url"] == f"/api/stimuli/{history.stimulus_sha256[i]}.png"
    assert {m["generation"] for m in front["members"]} == set(range(GENS))


def test_maximize_session_front_has_no_stretch_stage(client, stored):
    front = client.get(f"/api/sessions/{stored.maximize}/front").json()
    assert front["stages"] == [] and all(set(m["distances"]) == {"unit"} for m in front["members"])


def test_presentations_of_a_generation_carry_timing_counts_and_validity(client, stored, history):
    g = GENS - 1
    r = client.get(f"/api/sessions/{stored.invariance}/presentations", params={"generation": g})
    assert r.status_code == 200
    body = r.json()
    assert body["generation"] == g and body["units"] == ["complex-cell#0"]
    pres = body["presentations"]
    assert [p["order_in_batch"] for p in pres] == list(range(INSILICO["population"] + REFS))
    rows = np.flatnonzero(history.generation == g)
    for p, i in zip(pres, rows):
        assert p["id"] == history.presentation_id[i] and p["kind"] == history.kind[i]
        assert p["counts"] == [int(history.counts[i, 0])] and p["window_ms"] == history.window_ms[i].tolist()
        assert p["onset_source"] == "simulated"
        assert p["image_url"] == f"/api/stimuli/{history.stimulus_sha256[i]}.png"
        if p["id"] == stored.invalid_presentation:
            assert (p["valid"], p["dropped_frames"], p["qc_reasons"]) == (False, 2, ["dropped frames"])
            assert p["display_onset"] == pytest.approx(10.2)
        else:
            assert (p["valid"], p["dropped_frames"], p["qc_reasons"]) == (True, 0, [])
            assert p["display_onset"] == pytest.approx(10.0 + 0.2 * p["order_in_batch"])
        assert p["rig_onset"] is None  # simulated onsets have no rig clock
        assert (p["code_index"] is None) == (p["kind"] == "reference")
    # an earlier generation was never shown on a display: no timing, but counts
    first = client.get(f"/api/sessions/{stored.invariance}/presentations?generation=0").json()["presentations"]
    assert {p["onset_source"] for p in first} == {None} and {p["valid"] for p in first} == {None}
    assert all(len(p["counts"]) == 1 for p in first)
    everything = client.get(f"/api/sessions/{stored.invariance}/presentations").json()
    assert everything["generation"] is None and len(everything["presentations"]) == len(history)


def test_generation_images_are_the_batch_and_their_pngs_are_served(client, stored, history):
    from PIL import Image

    g = GENS - 1
    r = client.get(f"/api/sessions/{stored.invariance}/generations/{g}/images")
    assert r.status_code == 200
    images = r.json()
    rows = np.flatnonzero(history.generation == g)
    assert [im["presentation_id"] for im in images] == history.presentation_id[rows].tolist()
    assert [im["kind"] for im in images].count("reference") == REFS
    for im in images[:3] + [next(im for im in images if im["kind"] == "reference")]:
        png = client.get(im["url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert hashlib.sha256(png.content).hexdigest() == im["stimulus_sha256"]
        assert Image.open(io.BytesIO(png.content)).size == (16, 16)
        assert "immutable" in png.headers["cache-control"]


def test_events_are_the_session_log_and_can_be_polled_after_an_id(client, stored):
    r = client.get(f"/api/sessions/{stored.invariance}/events")
    assert r.status_code == 200
    events = r.json()
    assert [e["message"] for e in events] == stored.events
    assert [e["level"] for e in events] == ["info", "warning", "info"]
    assert events[0]["payload"] == {"source": "api_fixtures"}
    later = client.get(f"/api/sessions/{stored.invariance}/events", params={"after_id": events[0]["id"]}).json()
    assert [e["id"] for e in later] == [e["id"] for e in events[1:]]
    assert client.get(f"/api/sessions/{stored.maximize}/events").json() == []


UNKNOWN = uuid.UUID("00000000-0000-4000-8000-000000000000")


@pytest.mark.parametrize("suffix", ["", "/generations", "/front", "/presentations", "/events",
                                    "/generations/0/images"])
def test_unknown_session_is_404_with_one_line(client, stored, suffix):
    r = client.get(f"/api/sessions/{UNKNOWN}{suffix}")
    assert r.status_code == 404
    assert r.json() == {"detail": f"no session {UNKNOWN}"}


def test_unknown_generation_and_stimulus_are_404(client, stored):
    r = client.get(f"/api/sessions/{stored.invariance}/generations/{GENS}/images")
    assert r.status_code == 404
    assert r.json()["detail"] == f"session {stored.invariance} has no generation {GENS} (it has {GENS})"
    r = client.get(f"/api/sessions/{stored.invariance}/presentations", params={"generation": GENS})
    assert r.status_code == 404
    assert r.json()["detail"] == f"session {stored.invariance} has no generation {GENS} (it has {GENS})"
    r = client.get(f"/api/stimuli/{'0' * 64}.png")
    assert r.status_code == 404 and r.json() == {"detail": f"no stimulus {'0' * 64}"}


@pytest.mark.parametrize(
    "path, field",
    [
        ("/api/sessions/not-a-uuid", "path.session_id"),
        ("/api/sessions?limit=0", "query.limit"),
        ("/api/sessions/{sid}/generations?unit=1", "query.unit"),
        ("/api/sessions/{sid}/front?unit=-1", "query.unit"),
        ("/api/sessions/{sid}/presentations?generation=-1", "query.generation"),
        ("/api/sessions/{sid}/presentations?generation=x", "query.generation"),
        ("/api/sessions/{sid}/generations/-1/images", "path.generation"),
        ("/api/sessions/{sid}/events?after_id=-5", "query.after_id"),
        ("/api/stimuli/XYZ.png", "path.sha256"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(client, stored, path, field):
    r = client.get(path.format(sid=stored.invariance))
    assert r.status_code == 422
    body = r.json()
    assert body["detail"].startswith(f"{field}: ") and "\n" not in body["detail"]
    assert body["errors"][0]["loc"] == field.split(".")


def test_unit_beyond_the_session_units_names_the_allowed_range(client, stored):
    r = client.get(f"/api/sessions/{stored.invariance}/generations", params={"unit": 3})
    assert r.json()["detail"] == f"query.unit: session {stored.invariance} has 1 unit(s) (allowed: 0..0)"


def test_openapi_lists_every_route_and_the_operator_security(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    reads = ["/api/health", "/api/sessions", "/api/sessions/{session_id}", "/api/sessions/{session_id}/generations",
             "/api/sessions/{session_id}/front", "/api/sessions/{session_id}/presentations",
             "/api/sessions/{session_id}/generations/{generation}/images", "/api/sessions/{session_id}/events",
             "/api/stimuli/{sha256}.png"]
    verbs = ["/api/sessions"] + [f"/api/sessions/{{session_id}}/{v}" for v in ("start", "pause", "resume", "stop")]
    for p in reads:
        assert "get" in paths[p], p
        assert "security" not in paths[p]["get"]
    for p in verbs:
        op = paths[p]["post"]
        assert op["security"] == [{"HTTPBearer": []}], p
        assert {"401", "400", "422"} <= set(op["responses"]), p
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    create = paths["/api/sessions"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SessionCreate")
    assert "201" in create["responses"]
    assert paths["/api/stimuli/{sha256}.png"]["get"]["responses"]["200"]["content"] == {"image/png": {}}
    assert client.get("/docs").status_code == 200
