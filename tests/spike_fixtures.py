"""A stored live session with raw spike times, for the offline-analysis tests (issue 14).

The session runs over real ZeroMQ sockets and a real PostgreSQL: the server (SessionService), the simulated
recording bridge (Poisson spike times, deterministic from the seed) and a scripted display peer
(tests/test_live_loop.py). The fixture waits until every answered presentation's spike train (window +
margin, which trails its counts) is stored.
"""

from __future__ import annotations

import time
import uuid

from sqlalchemy import text

from server.service import SessionCreate, SessionService
from test_live_loop import FAST, PROBE, ScriptedDisplay, _bridge, _reference_code

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
