"""A server restarted over a stored live session that can no longer be rebuilt starts idle and says why in
the event log, instead of refusing to start (one bad session must not keep the rig's server down)."""

from sqlalchemy import text

from server.service import SessionCreate, SessionService
from test_live_loop import FAST, PROBE, _reference_code
from waiting import wait_for

pytest_plugins = ["db_fixtures"]


def test_a_session_that_cannot_be_resumed_leaves_the_server_idle_with_the_reason_logged(repo, db_engine, tmp_path):
    ref = _reference_code(tmp_path)
    service = SessionService(repo, bind="tcp://127.0.0.1:*", timing=FAST)
    try:
        sid = service.create(SessionCreate(operator="t", subject_id="M1", probe=PROBE, units=["sim:0"],
                                           reference={"source": "code", "path": str(ref)}))
        service.start(sid)  # proposes generation 0: the session is now 'running' with generations
        assert wait_for(lambda: repo.session_summary(sid).status == "running", 30)
    finally:
        service.close()
    with db_engine.begin() as c:  # the stored live spec no longer validates (no units)
        c.execute(text("UPDATE sessions SET config = jsonb_set(config, '{session,units}', '[]') WHERE id = :s"),
                  {"s": sid})
        before = c.execute(text("SELECT count(*) FROM presentations WHERE session_id = :s"), {"s": sid}).scalar()

    restarted = SessionService(repo, bind="tcp://127.0.0.1:*", timing=FAST, resume=True)
    try:
        assert restarted.loop is None and restarted.endpoint.session == "idle"
        with db_engine.connect() as c:
            events = c.execute(text("SELECT level, message FROM events WHERE session_id = :s ORDER BY id"),
                               {"s": sid}).all()
            after = c.execute(text("SELECT count(*) FROM presentations WHERE session_id = :s"), {"s": sid}).scalar()
        assert events[-1].level == "error" and events[-1].message.startswith("could not resume after a restart: ")
        assert "units" in events[-1].message and "\n" not in events[-1].message.strip()
        assert after == before and repo.session_summary(sid).status == "running"  # nothing stored was changed
    finally:
        restarted.close()
