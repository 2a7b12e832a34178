"""The HTTP server under test, on a real PostgreSQL (tests/db_fixtures.py) holding a real in-silico run.

Import the fixtures a test module needs by name (``from api_fixtures import client, service, ...``) and
declare ``pytest_plugins = ["db_fixtures"]`` for the PostgreSQL server. Each module gets a database
of its own (copied from the migrated template) so one module's writes never show in another's numbers.

Fixtures:
  api_db_url  (module)   URL of the module's database
  api_database(module)   server.db.Database on it
  stored      (module)   a stored in-silico invariance run (its maximize phase is a session too), with
                         simulated timings (one invalid presentation) and events on the newest generation
  service     (function) a SessionService on the module's database, ZeroMQ on a free loopback port
  client      (function) FastAPI TestClient of create_app(settings, service) with operator token TOKEN
  live_server (module)   the read-only app served by uvicorn on a free loopback port (for Chromium)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

TOKEN = "test-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# A small invariance probe: 4 maximize generations find the reference, then 6 probe generations.
INSILICO = {
    "mode": "invariance",
    "seed": 3,
    "generator": {"name": "dct", "code_size": 64, "image_size": 16, "channels": 1},
    "subject": {"name": "complex-cell", "wavelength": 6},
    "population": 12,
    "generations": 6,
    "retests": 0,  # exact presentation counts per generation (12 candidates + 4 references)
    "far_reach": 0,  # (no far-reach bands or seeds either)
    "reference": {"source": "maximize", "generations": 4},
    "noise": {"kind": "poisson"},
}
# What the operator sends to create a rig session (simulated units, no rig needed to store it).
CREATE = {
    "operator": "ana",
    "subject_id": "m01",
    "rig": "rig-test",
    "probe": {"mode": "maximize", "population": 8, "generations": 3,
              "generator": {"name": "dct", "code_size": 16, "image_size": 8, "channels": 1}},
    "units": ["sim:0", "sim:1"],
    "on_ms": 80,
    "off_ms": 120,
}
TABLES = ("sessions", "units", "generations", "stimuli", "presentations", "responses", "scores", "events")


def url_text(url) -> str:
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def api_db_url(pg_admin_url, pg_template):
    from db_fixtures import fresh_database

    yield from fresh_database(pg_admin_url, pg_template, prefix="snslab_api")


@pytest.fixture(scope="module")
def api_settings(api_db_url, tmp_path_factory):
    from server.settings import Settings

    return Settings(database_url=url_text(api_db_url), data_dir=tmp_path_factory.mktemp("snslab"))


@pytest.fixture(scope="module")
def api_database(api_settings):
    from server.db import connect

    db = connect(api_settings)
    yield db
    db.close()


@dataclass
class StoredRun:
    maximize: uuid.UUID
    invariance: uuid.UUID
    invalid_presentation: int  # in the newest generation of the invariance session
    events: list[str]  # messages logged on the invariance session


def store_insilico_run(repo, config: dict = INSILICO) -> dict[str, uuid.UUID]:
    """Run the in-silico probe with every generation stored; {phase: session id}."""
    from server.config import parse_config
    from server.insilico import DatabaseRecorder, run_probe

    recorder = DatabaseRecorder(repo)
    run_probe(parse_config(config), recorder=recorder)
    recorder.finish()
    return dict(recorder.sessions)


@pytest.fixture(scope="module")
def stored(api_database) -> StoredRun:
    from server.db import PresentationTiming

    repo = api_database.repository()
    sessions = store_insilico_run(repo)
    sid = sessions["invariance"]
    newest = repo.generation_data(sid, INSILICO["generations"] - 1).presentations
    timings = [PresentationTiming(p.id, "simulated", display_onset=10.0 + 0.2 * p.order_in_batch,
                                  scheduled_onset=10.0 + 0.2 * p.order_in_batch) for p in newest]
    bad = newest[1].id
    timings[1] = PresentationTiming(bad, "simulated", display_onset=10.2, dropped_frames=2, valid=False,
                                    qc_reasons=("dropped frames",))
    repo.record_timings(sid, timings)
    messages = ["display connected", "bridge slow to answer", "probe finished"]
    for msg, level in zip(messages, ("info", "warning", "info")):
        repo.log_event(sid, "test", msg, {"source": "api_fixtures"}, level=level)
    return StoredRun(sessions["maximize"], sid, bad, messages)


@pytest.fixture
def service(api_database):
    from server.service import SessionService

    svc = SessionService(api_database, bind="tcp://127.0.0.1:*")
    yield svc
    svc.close()


@pytest.fixture
def client(api_settings, api_database, service):
    from fastapi.testclient import TestClient

    from server.api.main import create_app

    with TestClient(create_app(api_settings, service, database=api_database, operator_token=TOKEN)) as c:
        c.auth = read_token  # reads need a token (verbs still need the Authorization header)
        yield c


def read_token(request):
    """httpx auth: GET requests carry the token as ``access_token`` (what the dashboard's EventSource does)."""
    if request.method == "GET" and "access_token" not in request.url.params:
        request.url = request.url.copy_add_param("access_token", TOKEN)
    return request


def row_counts(database) -> dict[str, int]:
    import sqlalchemy as sa

    with database.engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}


def session_rows(database) -> list[tuple]:
    """Every session's status and timestamps: a refused verb must change none of them."""
    import sqlalchemy as sa

    with database.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.text("SELECT id, status, updated_at, finished_at, n_units FROM sessions ORDER BY id"))]


# --- a real HTTP server and a real browser -------------------------------------------------------------------


class LiveServer:
    """uvicorn serving ``app`` in a thread, on a socket bound here to a free loopback port; it records the
    requests it answers (``requests``)."""

    def __init__(self, app):
        import uvicorn

        self.requests: list[str] = []  # "GET /path?query" of every request, in order

        @app.middleware("http")
        async def record(request, call_next):
            query = f"?{request.url.query}" if request.url.query else ""
            self.requests.append(f"{request.method} {request.url.path}{query}")
            return await call_next(request)

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # open event streams (the dashboard's) end within 2 s of shutdown
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture(scope="module")
def live_server(api_settings, api_database, stored) -> Iterator[LiveServer]:
    from server.api.main import create_app

    with LiveServer(create_app(api_settings, database=api_database, operator_token=TOKEN)) as server:
        yield server


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
requires_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup)")


def chromium(url: str, tmp: Path, *extra: str, budget_ms: int = 5000, timeout_s: float = 120) -> str:
    """Load ``url`` in headless Chromium for ``budget_ms`` of virtual time; returns stdout (--dump-dom)."""
    profile = tmp / f"profile-{uuid.uuid4().hex[:6]}"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url,
    ]
    env = dict(os.environ, HOME=str(tmp))  # no writes to the real home; no proxy for loopback
    env.pop("http_proxy", None), env.pop("HTTP_PROXY", None)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if done.returncode != 0:
        raise AssertionError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout
