"""A stored live session with raw spike times, for the offline-analysis tests (issue 14).

The session runs over real ZeroMQ sockets and a real PostgreSQL: the server (SessionService), the simulated
recording bridge (Poisson spike times, deterministic from the seed) and a scripted display peer
(tests/test_live_loop.py). The fixture waits until every answered presentation's spike train (window +
margin, which trails its counts) is stored.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from server.service import SessionCreate, SessionService
from test_live_loop import FAST, PROBE, ScriptedDisplay, _bridge, _reference_code

ROOT = Path(__file__).resolve().parents[1]
SPIKE_PROBE = PROBE | {"generations": 3, "population": 6}


def run_session_with_spikes(repo, db_engine, tmp_path, probe=SPIKE_PROBE) -> uuid.UUID:
    service = SessionService(repo, bind="tcp://127.0.0.1:*", timing=FAST)
    ref = _reference_code(tmp_path)
    spec = SessionCreate(operator="tester", subject_id="M1", probe=probe,
                         reference={"source": "code", "path": str(ref)}, units=["sim:0"])
    sid = service.create(spec)
    display = ScriptedDisplay(service.wire_address)
    bridge, stop, th = _bridge(service.wire_address, probe["seed"], probe["mode"])
    try:
        assert display.peer.wait_connected(10) and bridge.peer.wait_connected(10)
        service.start(sid)
        assert service.wait(sid, 90.0), f"session did not finish: {service.loop.stats}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the spike trains trail the counts by the margin
            with db_engine.connect() as c:
                missing = c.execute(text(
                    "SELECT count(*) FROM responses r JOIN presentations p ON p.id = r.presentation_id"
                    " LEFT JOIN spike_trains s ON s.presentation_id = p.id"
                    " WHERE p.session_id = :s AND s.presentation_id IS NULL"), {"s": sid}).scalar()
            if missing == 0:
                break
            time.sleep(0.1)
        assert missing == 0, f"{missing} answered presentations have no spike train"
    finally:
        stop.set()
        th.join(2)
        display.close()
        bridge.peer.close(flush_s=1.0)
        service.close()
    return sid


@dataclass
class SpikeSession:
    url: object  # sqlalchemy URL of the module's own database
    engine: object
    repo: object
    session_id: uuid.UUID

    @property
    def env(self) -> dict[str, str]:
        """Environment for a `snslab ...` subprocess on this database."""
        return {**os.environ, "DATABASE_URL": self.url.render_as_string(hide_password=False),
                "PYTHONPATH": str(ROOT), "COLUMNS": "200"}

    def snslab(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def spike_session(pg_admin_url, pg_template, tmp_path_factory):
    """A module's own database holding one live session with raw spike times (shared by its tests)."""
    from db_fixtures import fresh_database
    from server.db.database import make_engine
    from server.db.repository import Repository

    for url in fresh_database(pg_admin_url, pg_template):
        engine = make_engine(url)
        try:
            repo = Repository(engine)
            sid = run_session_with_spikes(repo, engine, tmp_path_factory.mktemp("spikes"))
            yield SpikeSession(url, engine, repo, sid)
        finally:
            engine.dispose()
