"""Bad input while a real session runs: every rogue message is refused with a one-line reason naming the
field, logged, and changes nothing stored; afterwards the session completes as if nothing had happened.

Set-up as in tests/test_live_loop.py (SessionService on a real PostgreSQL, the simulated recording bridge
in process, a scripted display peer), plus rogue clients: raw ZeroMQ DEALER sockets that build their
frames by hand (pydantic would refuse to build most of them) and answer nothing but acks.

No good traffic may be in flight while a bad message is judged, so the display holds after showing the
first generation and three presentations of the second one: the second generation stays open (its other
presentations are real targets for forged counts) and, once the bridge has answered what was shown, the
database is quiet. Every table's row count and content digest is compared before and after each message.
"""

import dataclasses
import json
import logging
import time
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import zmq
from sqlalchemy import text

from server.db.models import Base
from server.service import SessionCreate, SessionService
from test_live_loop import FAST, ScriptedDisplay, _bridge
from wire.messages import Envelope, decode, encode
from waiting import wait_for

pytest_plugins = ["db_fixtures"]

POPULATION, GENERATIONS, HOLD_AFTER = 8, 3, 8 + 3
PROBE = {
    "mode": "maximize", "seed": 11, "population": POPULATION, "generations": GENERATIONS,
    "generator": {"name": "dct", "code_size": 64, "image_size": 16, "channels": 1},
    "reference": {"check_repeats": 0},  # (the live reference check is tested in test_live_reference_check)
}
FORGED = 777  # a count the simulated neuron cannot produce in a 150 ms window
TOKEN = "bad-input-token"


class RawClient:
    """A hand-driven DEALER: sends whatever frames it is given and reads the server's answers."""

    def __init__(self, address, client_id):
        self.client_id = client_id
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, client_id.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.session = ""

    def hello(self, role):
        env = Envelope.make("hello", {"role": role, "client_id": self.client_id, "instance": uuid.uuid4().hex},
                            session="", sender=self.client_id)
        self.sock.send_multipart(encode(env))
        welcome = self.answer(lambda e: e.type == "welcome")
        self.session = welcome.session

    def header(self, type, payload, *, session=None, **override):
        """A header as JSON written by hand: NaN and any value pydantic would refuse go out as given."""
        mid = uuid.uuid4().hex
        env = dict(v=1, id=mid, type=type, session=self.session if session is None else session,
                   sender=self.client_id, sent_at=time.time(), n_blobs=0, reliable=True, payload=payload)
        return json.dumps(env | override).encode(), override.get("id", mid)

    def answer(self, match, timeout_s=10.0):
        """The first message from the server that ``match`` accepts; reliable ones are acked meanwhile."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.sock.poll(50):
                continue
            env, _ = decode(self.sock.recv_multipart())
            if env.reliable:
                ack = Envelope.make("ack", {"ack_of": env.id}, session=env.session, sender=self.client_id)
                self.sock.send_multipart(encode(ack))
            if match(env):
                return env
        raise AssertionError(f"{self.client_id}: no answer from the server in {timeout_s} s")

    def refusal(self, mid):
        """The nack or error that answers message ``mid`` (an error without ref when no id was readable)."""
        def match(e):
            if e.type == "nack":
                return e.payload.ack_of == mid
            return e.type == "error" and e.payload.ref == mid
        return self.answer(match)

    def close(self):
        self.sock.close(linger=0)


def snapshot(engine):
    """Row count and content digest of every table."""
    parts = [f"SELECT '{t.name}', count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), ''))"
             f" FROM {t.name} x" for t in Base.metadata.sorted_tables]
    with engine.connect() as c:
        return {name: (n, digest) for name, n, digest in c.execute(text(" UNION ALL ".join(parts)))}


@pytest.fixture
def service(repo):
    # every refusal must be logged: more than the default 20 lines per 10 s come here, and which of them a
    # rate limit drops would depend on this machine's speed
    svc = SessionService(repo, bind="tcp://127.0.0.1:*", timing=dataclasses.replace(FAST, log_burst=10_000))
    yield svc
    svc.close()


def counts_payload(pid, counts=(FORGED,), units=("sim:0",), seq=1, **item):
    return {"seq": seq, "units": list(units),
            "items": [{"presentation_id": str(pid), "counts": list(counts), "onset_source": "flip", "valid": True}
                      | item]}


def report_payload(pid, order=0):
    return {"presentation_id": str(pid), "batch_id": "g1.2", "generation": 1, "stimulus_id": "s" * 32,
            "order": order, "flip_time": 1.0, "offset_time": 1.1, "frames_on": 6, "frames_off": 6,
            "refresh_hz": 60.0, "on_duration_s": 0.1, "dropped_frames": 0, "marker_sent": False}


def test_bad_input_on_the_wire_and_the_api_is_refused_and_changes_nothing(service, repo, db_engine, caplog,
                                                                          tmp_path):
    caplog.set_level(logging.INFO)
    sid = service.create(SessionCreate(operator="tester", subject_id="M1", probe=PROBE, units=["sim:0"]))
    display = ScriptedDisplay(service.wire_address, hold_after=HOLD_AFTER)
    bridge, stop, th = _bridge(service.wire_address, PROBE["seed"], "maximize")
    rogues = []
    try:
        assert display.peer.wait_connected(10) and bridge.peer.wait_connected(10)
        service.start(sid)
        loop = service.loop
        # quiet: the display holds, and every presentation it showed has its counts stored
        assert wait_for(lambda: len(display.reported) >= HOLD_AFTER and loop.stats.counts >= HOLD_AFTER, 60), "the hold"
        before, quiet = snapshot(db_engine), False
        for _ in range(100):
            time.sleep(0.3)
            now = snapshot(db_engine)
            quiet, before = now == before, now
            if quiet:
                break
        assert quiet, "the database kept changing while the display held"
        open_gen = loop.runner.open
        assert open_gen is not None and open_gen.batch.generation == 1 and len(loop.runner.reports) == 1
        target = loop.runner.unanswered()[0].presentation_id  # real, open, not yet shown
        shown = [int(p) for p in display.reported]
        counts_before = loop.stats.counts
        rejected_before = (loop.stats.rejected, service.endpoint.stats["rejected"])
        n_cases = 0

        rb = RawClient(service.wire_address, "rogue-bridge")
        rd = RawClient(service.wire_address, "rogue-display")
        rn = RawClient(service.wire_address, "rogue-nohello")
        rogues += [rb, rd, rn]
        rb.hello("bridge")
        rd.hello("display")  # it is sent what is outstanding, like any display; RawClient acks it
        assert rb.session == str(sid)

        def case(client, frames_mid, field, kind="nack"):
            nonlocal n_cases
            n_cases += 1
            frames, mid = frames_mid
            frames = frames if isinstance(frames, list) else [frames]
            start = len(caplog.records)
            state = snapshot(db_engine)
            client.sock.send_multipart(frames)
            ans = client.refusal(mid)
            reason = ans.payload.reason
            assert ans.type == kind, (field, ans)
            assert reason.startswith(f"{field}:") and "\n" not in reason, (field, reason)
            logged = [r.getMessage() for r in caplog.records[start:]]
            assert any(reason in m for m in logged), (reason, logged)
            assert snapshot(db_engine) == state, f"{field}: the refused message changed the database"
            return reason

        def counts(pid, **kw):
            return rb.header("counts_batch", counts_payload(pid, **kw))

        # malformed frames
        case(rb, (b"{not json", None), "header", "error")
        case(rb, (b"[1, 2, 3]", None), "header", "error")
        case(rb, (b"", None), "header", "error")
        case(rb, rb.header("counts_batch", counts_payload(target), v=2), "v", "error")
        no_id = json.loads(rb.header("counts_batch", counts_payload(target))[0])
        del no_id["id"]
        case(rb, (json.dumps(no_id).encode(), None), "id", "error")
        frames, mid = counts(target)
        case(rb, ([frames, b"\x00" * 12], mid), "n_blobs")
        case(rb, rb.header("frobnicate", {"x": 1}), "type")
        # oversized: a header over 1 MiB (id unreadable at that size), and too many items in a batch
        big = counts_payload(target, qc_reasons=["x" * 100] * 12000)
        case(rb, (rb.header("counts_batch", big)[0], None), "header", "error")
        many = {"seq": 1, "units": ["sim:0"], "items": [
            {"presentation_id": str(target + k), "counts": [1], "onset_source": "flip", "valid": True}
            for k in range(4097)]}
        # (a header over 64 KiB has its id left unread, so the answer is an error without ref, not a nack)
        case(rb, (rb.header("counts_batch", many)[0], None), "payload.items", "error")
        # who and which session
        case(rb, rb.header("counts_batch", counts_payload(target), sender="bridge-test"), "sender")
        case(rn, rn.header("counts_batch", counts_payload(target), session=str(sid)), "sender", "error")
        case(rb, rb.header("counts_batch", counts_payload(target), session="no-such-session"), "session", "error")  # retry later, not final
        case(rb, rb.header("counts_batch", counts_payload(target), session="idle"), "session")  # known, not running
        case(rd, rd.header("counts_batch", counts_payload(target)), "sender")  # counts from a display
        case(rb, rb.header("presentation_report", report_payload(target)), "sender")  # a report from a bridge
        # ids and units
        case(rb, counts(987654321), "presentation_id")
        case(rb, counts(f"0{target}"), "presentation_id")  # not the id as dispatched
        case(rb, counts(shown[0] + 10_000), "presentation_id")
        case(rb, counts(target, units=["sim:7"]), "units")
        case(rb, counts(target, units=["sim:0", "sim:0"], counts=[1, 1]), "units")
        dup = counts_payload(target)
        dup["items"] = dup["items"] * 2
        case(rb, rb.header("counts_batch", dup), "payload.items[1].presentation_id")
        # counts and windows
        case(rb, counts(target, counts=[-1]), "payload.items[0].counts[0]")
        case(rb, counts(target, counts=[float("nan")]), "payload.items[0].counts[0]")
        case(rb, counts(target, baseline_counts=[-3]), "payload.items[0].baseline_counts[0]")
        case(rb, counts(target, seq=-1), "payload.seq")
        case(rb, counts(target, window_ms=[float("nan"), 200.0]), "payload.items[0].window_ms[0]")
        case(rb, counts(target, window_ms=[200.0, 50.0]), "payload.items[0].window_ms")
        # reports
        case(rd, rd.header("presentation_report", report_payload(987654321)), "presentation_id")
        case(rd, rd.header("presentation_report", report_payload(target), session="idle"), "session")
        case(rd, rd.header("presentation_report", report_payload(target) | {"flip_time": float("nan")}),
             "payload.flip_time")

        # the HTTP API of the same service: a wrong token, an unknown session, bad values
        from fastapi.testclient import TestClient

        from server.api.main import create_app
        from server.settings import Settings

        app = create_app(Settings(data_dir=tmp_path), service, database=SimpleNamespace(engine=db_engine),
                         operator_token=TOKEN)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with TestClient(app) as http:
            def read_token(request):  # reads need a token too: GETs carry it as access_token
                if request.method == "GET" and "access_token" not in request.url.params:
                    request.url = request.url.copy_add_param("access_token", TOKEN)
                return request

            http.auth = read_token
            for method, url, headers, body, status, field in [
                ("post", f"/api/sessions/{sid}/stop", {"Authorization": "Bearer x"}, None, 401, "wrong operator token"),
                ("post", f"/api/sessions/{sid}/stop", {}, None, 401, "operator token required"),
                ("post", f"/api/sessions/{uuid.uuid4()}/pause", auth, None, 404, "no session"),
                ("post", "/api/sessions/not-a-uuid/pause", auth, None, 422, "path.session_id"),
                ("post", "/api/sessions", auth, {"operator": "x", "subject_id": "m", "on_ms": -1}, 422, "body.on_ms"),
                ("get", f"/api/sessions/{sid}/presentations?generation=-1", {}, None, 422, "query.generation"),
            ]:
                state = snapshot(db_engine)
                r = getattr(http, method)(url, headers=headers, **({"json": body} if body is not None else {}))
                detail = r.json()["detail"]
                assert r.status_code == status and detail.startswith(field) and "\n" not in detail, (url, r.text)
                assert snapshot(db_engine) == state, f"{url}: the refused request changed the database"

        # nothing arrives later either (a forwarded forged report would have come back as counts by now)
        time.sleep(1.0)
        assert snapshot(db_engine) == before
        assert loop.stats.counts == counts_before and not loop.finished.is_set()
        # every case was counted once by the endpoint; the 12 that passed the wire's checks by the live loop
        assert service.endpoint.stats["rejected"] - rejected_before[1] == n_cases == 30
        assert loop.stats.rejected - rejected_before[0] == 10

        display.released.set()
        assert service.wait(sid, 60.0), f"session did not finish: {loop.stats}"
    finally:
        for r in rogues:
            r.close()
        stop.set()
        th.join(2)
        display.close()
        bridge.peer.close()

    assert len(loop.runner.reports) == GENERATIONS
    with db_engine.connect() as c:
        rows = c.execute(text("SELECT p.id, p.superseded, r.counts FROM presentations p"
                              " LEFT JOIN responses r ON r.presentation_id = p.id WHERE p.session_id = :s"),
                         {"s": sid}).all()
        status = c.execute(text("SELECT status FROM sessions WHERE id = :s"), {"s": sid}).scalar()
    active = [r for r in rows if not r.superseded]
    candidates = sum(len(r.responses) for r in loop.runner.reports)  # the population (+ any re-tests)
    assert len(active) == candidates >= GENERATIONS * POPULATION and all(r.counts is not None for r in active)
    assert status == "completed"
    assert not any(FORGED in r.counts for r in rows if r.counts is not None)
    target_counts = next(r.counts for r in rows if r.id == target)
    assert np.all(np.asarray(target_counts) < FORGED)
