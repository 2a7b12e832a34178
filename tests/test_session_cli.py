"""`snslab session ...` against a live `snslab server` process: every command in its own process, as an
operator types it, with the token from the environment; the state each one leaves is read from the database."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sqlalchemy as sa

from api_fixtures import api_db_url, url_text  # noqa: F401  (fixture)
from server_process import ROOT, ServerProcess, clean_env

pytest_plugins = ["db_fixtures"]

TOKEN = "cli-operator-token"


def snslab(srv, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    env = clean_env(**({"SNSLAB_OPERATOR_TOKEN": token} if token else {}))
    return subprocess.run([sys.executable, "-m", "server.cli", "session", *args, "--server", srv.url],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def srv(api_db_url, tmp_path_factory):
    with ServerProcess(url_text(api_db_url), tmp_path_factory.mktemp("data"), token=TOKEN) as s:
        yield s


def _status(engine, sid) -> str:
    with engine.connect() as c:
        return c.execute(sa.text("SELECT status FROM sessions WHERE id = :s"), {"s": sid}).scalar_one()


def _events(engine, sid) -> list[str]:
    with engine.connect() as c:
        return c.execute(sa.text("SELECT message FROM events WHERE session_id = :s ORDER BY id"), {"s": sid}).scalars().all()


@pytest.mark.slow
def test_session_commands_drive_a_live_server(srv, api_db_url, tmp_path):
    engine = sa.create_engine(url_text(api_db_url))
    spec = tmp_path / "session.json"
    spec.write_text(json.dumps({
        "operator": "ana", "subject_id": "m07", "rig": "rig-cli", "units": ["sim:0", "sim:1"],
        "probe": {"mode": "maximize", "population": 6, "generations": 3,
                  "generator": {"name": "dct", "code_size": 16, "image_size": 8, "channels": 1}},
    }))
    # created from a file, with one field overridden by an option
    done = snslab(srv, "create", str(spec), "--generations", "4", "--json")
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    sid = created["id"]
    assert created["status"] == "paused" and created["generations_budget"] == 4
    assert created["subject_id"] == "m07" and [u["label"] for u in created["units"]] == ["sim:0", "sim:1"]
    assert _status(engine, sid) == "paused"

    # and from options only
    done = snslab(srv, "create", "--mode", "maximize", "--operator", "bo", "--subject", "m08", "--population", "4",
                  "--generations", "2", "--generator", "dct")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("created ") and " paused " in done.stdout and "m08" in done.stdout
    other = done.stdout.split()[1]

    listing = snslab(srv, "list")
    assert listing.returncode == 0
    lines = listing.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines[:2]] == [other, sid]  # newest first

    for verb, status in (("start", "running"), ("pause", "paused"), ("resume", "running"), ("stop", "aborted")):
        done = snslab(srv, verb, sid)
        assert done.returncode == 0, (verb, done.stderr)
        assert f" {status} " in done.stdout
        assert _status(engine, sid) == status, verb
    messages = _events(engine, sid)
    for verb in ("create", "start", "pause", "resume", "stop"):  # who did what, in the log
        assert sum(m.startswith(f"{verb} requested by ") and "(snslab session)" in m for m in messages) == 1, messages

    shown = snslab(srv, "show", sid, "--json")
    assert shown.returncode == 0
    body = json.loads(shown.stdout)
    assert body["status"] == "aborted" and body["neuron"]["units"][0]["label"] == "sim:0"
    text = snslab(srv, "show", sid).stdout
    assert sid in text and "aborted" in text and "unit sim:1: no reference response yet" in text


@pytest.mark.slow
def test_session_commands_refuse_in_one_line(srv, api_db_url):
    engine = sa.create_engine(url_text(api_db_url))
    with engine.connect() as c:
        before = c.execute(sa.text("SELECT count(*) FROM sessions")).scalar_one()
    no_token = snslab(srv, "create", "--mode", "maximize", "--subject", "m1", token=None)
    assert no_token.returncode == 2 and not no_token.stdout
    assert no_token.stderr.strip().splitlines() == ["error: server answered 401: operator token required "
                                                    "(Authorization: Bearer <token>)"]
    wrong = snslab(srv, "create", "--mode", "maximize", "--subject", "m1", token="nope")
    assert wrong.returncode == 2 and "401: wrong operator token" in wrong.stderr
    bad = snslab(srv, "create", "--mode", "sideways", "--subject", "m1")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "mode" in bad.stderr
    assert "Traceback" not in bad.stderr
    not_id = snslab(srv, "start", "12")
    assert not_id.returncode == 2 and "session_id: '12' is not a session id" in not_id.stderr
    unknown = snslab(srv, "pause", "00000000-0000-0000-0000-000000000001")
    assert unknown.returncode == 2 and "404" in unknown.stderr
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM sessions")).scalar_one() == before
    down = subprocess.run([sys.executable, "-m", "server.cli", "session", "list", "--server", "http://127.0.0.1:9"],
                          cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert down.returncode == 2 and "cannot reach http://127.0.0.1:9" in down.stderr
