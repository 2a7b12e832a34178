"""The reliability layer over real ZeroMQ sockets on 127.0.0.1: ack, re-send, bounded retries, dedupe,
heartbeats, dead peers, reconnects, restarts, and bad input on both kinds of socket."""

from __future__ import annotations

import json
import logging
import time
import uuid

import numpy as np
import pytest
import zmq

from wire import messages as m
from wire.ledger import PresentationLedger
from snslab_common.rejections import RejectionLog
from wire.transport import Peer, Reject, ServerEndpoint, Timing
from waiting import wait_for

FAST = Timing(heartbeat_s=0.1, heartbeat_misses=5, ack_timeout_s=0.05, backoff=2.0, max_ack_timeout_s=0.2, max_retries=3)


def report(pid: str, **kw) -> dict:
    base = dict(
        presentation_id=pid, batch_id="b0", generation=0, stimulus_id="s0", order=0, flip_time=1.0,
        offset_time=1.1, frames_on=6, frames_off=6, refresh_hz=60.0, on_duration_s=0.1, dropped_frames=0,
        marker_sent=True,
    )  # fmt: skip
    base.update(kw)
    return base


def batch(n=3, batch_id="b0"):
    imgs = [np.full((4, 4, 3), 40 * i, np.uint8) for i in range(n)]
    b = m.StimulusBatch(
        batch_id=batch_id, generation=0, images=[m.ImageSpec.of(f"s{i}", im) for i, im in enumerate(imgs)],
        presentations=[m.Presentation(presentation_id=f"{batch_id}-p{i}", stimulus_id=f"s{i}", image=i, order=i)
                       for i in range(n)],
    )  # fmt: skip
    return b, imgs


@pytest.fixture
def closing():
    items = []
    yield items.append
    for it in reversed(items):
        it.close()


def server(closing, **kw) -> ServerEndpoint:
    kw.setdefault("timing", FAST)
    srv = ServerEndpoint(kw.pop("bind", "tcp://127.0.0.1:*"), session=kw.pop("session", "S1"), **kw)
    closing(srv)
    return srv


def peer(closing, srv_or_port, client_id="display-1", **kw) -> Peer:
    port = srv_or_port if isinstance(srv_or_port, int) else srv_or_port.port
    kw.setdefault("timing", FAST)
    p = Peer(f"tcp://127.0.0.1:{port}", client_id=client_id, role=kw.pop("role", "display"), **kw)
    closing(p)
    return p


def test_reliable_message_is_acked_and_handled_once(closing):
    srv = server(closing)
    got = []
    srv.on("presentation_report", lambda msg: got.append((msg.peer, msg.payload.presentation_id, msg.env.session)))
    srv.start()
    cl = peer(closing, srv, capabilities={"refresh_hz": 60.0}).start()
    assert cl.wait_connected(15) and cl.session == "S1" and cl.server_id == "server"
    (info,) = srv.clients(role="display")
    assert info.alive and info.capabilities == {"refresh_hz": 60.0} and info.instance == cl.instance
    cl.send("presentation_report", report("p0"))
    assert wait_for(lambda: cl.pending_count() == 0 and got)
    assert got == [("display-1", "p0", "S1")]
    assert cl.stats["acked"] == 1 and srv.stats["handled"] == 1


def test_send_before_welcome_is_refused_in_the_caller(closing):
    cl = peer(closing, 1)  # nothing listens on port 1
    with pytest.raises(m.ProtocolError, match="^session: not known yet"):
        cl.send("presentation_report", report("p0"))
    with pytest.raises(m.ProtocolError, match=r"^payload\.items\[0\]\.counts\[0\]"):
        cl.send(
            "counts_batch",
            dict(seq=0, units=["u"], items=[dict(presentation_id="p", counts=[-1], onset_source="ttl", valid=True)]),
            session="S1",
        )


def test_handler_crash_is_retried_and_reject_is_not(closing):
    srv = server(closing)
    calls = []

    def flaky(msg):
        calls.append(msg.payload.presentation_id)
        if msg.payload.presentation_id == "p0" and calls.count("p0") < 3:
            raise RuntimeError("database busy")
        if msg.payload.presentation_id == "p1":
            raise Reject("presentation p1 was cancelled")

    srv.on("presentation_report", flaky)
    srv.start()
    cl = peer(closing, srv)
    nacks = []
    cl.on_nack = lambda mid, mtype, reason: nacks.append((mtype, reason))
    cl.start()
    assert cl.wait_connected(15)
    cl.send("presentation_report", report("p0"))
    cl.send("presentation_report", report("p1"))
    assert wait_for(lambda: cl.pending_count() == 0)
    assert calls.count("p0") == 3 and calls.count("p1") == 1  # crash -> re-sent; reject -> refused once
    assert cl.stats["resent"] >= 2 and cl.stats["acked"] == 1 and cl.stats["nacked"] == 1
    assert nacks == [("presentation_report", "presentation p1 was cancelled")]
    assert srv.stats["handler_errors"] == 2


def test_resent_copy_is_acked_again_but_handled_once(closing):
    srv = server(closing)
    got = []
    srv.on("presentation_report", lambda msg: got.append(msg.env.id))
    srv.start()
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.ROUTING_ID, b"display-9")
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(srv.endpoint)
    closing(raw)
    hello = m.Envelope.make("hello", dict(role="display", client_id="display-9", instance=uuid.uuid4().hex), session="", sender="display-9")
    raw.send_multipart(m.encode(hello))
    welcome, _ = m.decode(raw.recv_multipart())
    assert welcome.type == "welcome" and welcome.session == "S1"
    frames = m.encode(m.Envelope.make("presentation_report", report("p0"), session="S1", sender="display-9"))
    raw.send_multipart(frames)
    raw.send_multipart(frames)  # as if our ack was lost
    acks = []
    while len(acks) < 2:
        assert raw.poll(15000), "no answer from the server"
        env, _ = m.decode(raw.recv_multipart())
        if env.type == "ack":
            acks.append(env.payload.ack_of)
    assert acks == [frames and json.loads(frames[0])["id"]] * 2
    assert len(got) == 1 and srv.stats["duplicates"] == 1


class RawServer:
    """A bare ROUTER that welcomes hellos and heartbeats but never acknowledges anything."""

    def __init__(self, closing):
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        closing(self.sock)
        self.instance = uuid.uuid4().hex
        self.who = None
        self.last_hb = 0.0
        self.seen: list[m.Envelope] = []

    def send(self, frames):
        self.sock.send_multipart([b"display-1", *frames])

    def serve(self, until, peers=(), timeout=15.0):
        """Drive the raw ROUTER (and the given endpoints) until ``until()`` or the timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until():
            for p in peers:
                p.poll_once(0.002)
            if self.sock.poll(2):
                ident, *frames = self.sock.recv_multipart()
                env, _ = m.decode(frames)
                self.seen.append(env)
                if env.type == "hello":
                    self.who = ident
                    w = dict(server_instance=self.instance, heartbeat_s=0.1, heartbeat_misses=5)
                    self.sock.send_multipart([ident, *m.encode(m.Envelope.make("welcome", w, session="S1", sender="server"))])
            if self.who and time.monotonic() - self.last_hb > 0.05:
                self.last_hb = time.monotonic()
                hb = m.Envelope.make("heartbeat", {}, session="S1", sender="server")
                self.sock.send_multipart([self.who, *m.encode(hb)])
        return until()


def test_retries_are_bounded_while_the_server_is_alive(closing):
    raw = RawServer(closing)
    cl = peer(closing, raw.port)
    given_up = []
    cl.on_give_up = lambda mid, mtype: given_up.append((mid, mtype))
    assert raw.serve(lambda: cl.connected, peers=[cl])
    mid = cl.send("presentation_report", report("p0"))
    assert raw.serve(lambda: bool(given_up), peers=[cl])
    sends = [e for e in raw.seen if e.type == "presentation_report"]
    assert len(sends) == FAST.max_retries + 1 and {e.id for e in sends} == {mid}
    assert given_up == [(mid, "presentation_report")] and cl.pending_count() == 0
    assert cl.stats["gave_up"] == 1 and cl.stats["lost"] == 0


def test_resend_schedule_backs_off_and_is_bounded(closing):
    """The re-send clock on a fake time line: 0.05, 0.1, 0.2 (capped), then give up."""
    from wire.reliability import _Link, _Pending

    cl = peer(closing, 1, timing=Timing(ack_timeout_s=0.05, backoff=2.0, max_ack_timeout_s=0.2, max_retries=3))
    link = _Link()
    link.pending["a" * 32] = _Pending("a" * 32, "control", [b"x"], timeout=0.05, due=10.0)
    sent, now = [], 10.0
    while link.pending and now < 20:
        cl._resend_due(link, now, lambda frames: sent.append(now) or True)
        now = round(now + 0.01, 2)
    assert sent == [10.0, 10.05, 10.15, 10.35] and cl.stats["gave_up"] == 1
    # a socket that cannot take the message does not spend the retry budget
    link.pending["b" * 32] = _Pending("b" * 32, "control", [b"x"], timeout=0.05, due=0.0)
    for t in range(50):
        cl._resend_due(link, t, lambda frames: False)
    assert link.pending["b" * 32].attempts == 0


def test_dead_server_pauses_retries_and_a_restarted_server_gets_everything(closing):
    srv = server(closing)
    srv.start()
    port = srv.port
    cl = peer(closing, srv)
    lost, welcomes = [], []
    cl.on_lost = lambda: lost.append(time.monotonic())
    cl.on_welcome = lambda env, restarted: welcomes.append(restarted)
    cl.start()
    assert cl.wait_connected(15)
    first_instance = cl.server_instance
    srv.close()
    assert wait_for(lambda: cl.state == "lost")
    ids = [cl.send("presentation_report", report(f"p{i}")) for i in range(3)]  # sent while the server is down
    time.sleep(4 * FAST.max_ack_timeout_s)  # longer than the whole retry budget: nothing may be given up
    assert cl.stats["gave_up"] == 0 and cl.pending_count() == 3
    srv2 = server(closing, bind=f"tcp://127.0.0.1:{port}")
    got = []
    srv2.on("presentation_report", lambda msg: got.append(msg.env.id))
    srv2.start()
    assert wait_for(lambda: cl.pending_count() == 0 and len(got) == 3)
    assert sorted(got) == sorted(ids) and cl.server_instance != first_instance
    assert len(lost) == 1 and welcomes[-1] is True and cl.stats["gave_up"] == 0


def test_server_detects_a_silent_client_and_takes_it_back(closing):
    disconnected, hellos = [], []
    srv = server(closing, on_disconnect=lambda c: disconnected.append(c.client_id), on_hello=lambda c, new: hellos.append((c.client_id, new)))
    srv.start()
    cl = peer(closing, srv)
    assert cl.wait_connected(15)  # driven here, no thread: stops heartbeating when we stop polling
    assert wait_for(lambda: bool(disconnected))
    assert disconnected == ["display-1"] and srv.clients(alive_only=True) == []
    # polled again, the client heartbeats; the server takes it back without a new hello
    assert wait_for(lambda: cl.connected and srv.clients(alive_only=True), poll=[cl])
    assert hellos == [("display-1", True)]
    # a client that itself lost the server says hello again: same process, so not a new instance
    cl._link.last_rx -= 10  # as if the server had been silent for 10 s
    cl._tick(time.monotonic())
    assert cl.state == "lost"
    assert wait_for(lambda: cl.connected and len(hellos) == 2, poll=[cl])
    assert hellos == [("display-1", True), ("display-1", False)]


def test_restarted_client_announces_itself_and_gets_what_is_outstanding(closing):
    ledger = PresentationLedger()
    hellos, statuses = [], []

    def on_hello(client, new_instance):
        hellos.append((client.instance, new_instance))
        for b, blobs in ledger.outstanding_batches():
            srv.send_to(client.client_id, "stimulus_batch", b, blobs)

    srv = server(closing, on_hello=on_hello)
    srv.on("presentation_report", lambda msg: statuses.append(ledger.record(msg.payload)))
    srv.start()
    first = peer(closing, srv)
    got1 = []
    first.on("stimulus_batch", lambda msg: got1.append(msg.payload))
    first.start()
    assert first.wait_connected(15)
    b, imgs = batch(3)
    ledger.add_batch(b, [m.image_to_blob(i) for i in imgs])
    srv.send_to("display-1", "stimulus_batch", b, imgs)
    assert wait_for(lambda: got1)
    first.send("presentation_report", report("b0-p0"))
    assert wait_for(lambda: first.pending_count() == 0)
    first.close()  # the process dies; the next one has the same id and a new instance
    second = peer(closing, srv)
    got2 = []
    second.on("stimulus_batch", lambda msg: got2.append((msg.payload, [bytes(x) for x in msg.blobs])))
    second.start()
    assert wait_for(lambda: got2)
    # on every hello the outstanding part is re-sent (a hello repeated before the welcome arrived on a
    # loaded machine means a second copy; the display skips ids it holds)
    for b2, blobs2 in got2:
        assert [p.presentation_id for p in b2.presentations] == ["b0-p1", "b0-p2"]
        assert blobs2 == [m.image_to_blob(i) for i in imgs[1:]]
    # a re-delivery keeps the presentation's attempt (showing a slot again is a new presentation)
    attempts = [p.attempt for p in got2[0][0].presentations]
    assert attempts == [0, 0]
    for p in got2[0][0].presentations:
        second.send("presentation_report", report(p.presentation_id, attempt=p.attempt))
    second.send("presentation_report", report("b0-p1", attempt=attempts[0]))  # a stray repeat is not counted twice
    assert wait_for(lambda: second.pending_count() == 0 and len(statuses) == 4)
    assert statuses == ["new", "new", "new", "duplicate"]
    assert ledger.complete and sorted(ledger.reports) == ["b0-p0", "b0-p1", "b0-p2"]
    # each process announced itself as a new instance on its first hello
    firsts = {}
    for instance, new in hellos:
        firsts.setdefault(instance, new)
    assert list(firsts) == [first.instance, second.instance] and list(firsts.values()) == [True, True]


def test_session_switch_and_unknown_session(closing):
    srv = server(closing)
    got = []
    srv.on("presentation_report", lambda msg: got.append(msg.env.session))
    srv.start()
    cl = peer(closing, srv)
    nacks = []
    cl.on_nack = lambda mid, mtype, reason: nacks.append(reason)
    cl.start()
    assert cl.wait_connected(15)
    srv.set_session("S2")
    assert wait_for(lambda: cl.session == "S2")
    cl.send("presentation_report", report("late"), session="S1")  # a late report of the old session: accepted
    cl.send("presentation_report", report("p9"), session="S9")
    # a session the server has not opened (yet) is "retry later", never a final refusal: the client keeps it
    assert wait_for(lambda: srv.stats["rejected"] >= 2)
    assert got == ["S1"] and nacks == [] and cl.pending_count() == 1
    srv.set_session("S9")  # e.g. a restarted server re-opened it: the kept message lands
    assert wait_for(lambda: cl.pending_count() == 0)
    assert got == ["S1", "S9"] and nacks == []


def test_pinned_session_mismatch_is_refused(closing, caplog):
    srv = server(closing).start()
    cl = peer(closing, srv, session="S7").start()
    with caplog.at_level(logging.WARNING, logger="snslab.wire"):
        assert not cl.wait_connected(0.5)
    assert "rejected hello from display-1: session: unknown session 'S7' (known: S1)" in caplog.text


def _bad_inputs(session="S1", sender="display-1"):
    good = m.encode(m.Envelope.make("presentation_report", report("p0"), session=session, sender=sender))
    head = json.loads(good[0])

    def variant(**changes):
        h = dict(head, id=uuid.uuid4().hex, **changes)
        return [json.dumps(h).encode()]

    nan_counts = dict(seq=0, units=["u0"], items=[dict(presentation_id="p0", counts=[float("nan")], onset_source="ttl", valid=True)])
    return [
        ([b"{not json"], "header: malformed JSON"),
        ([good[0], b"extra frame"], "n_blobs: header says 0 binary frames, got 1"),
        (variant(type="launch"), "type: unknown message type 'launch'"),
        ([good[0] + b" " * 3000], "header: 3"),
        (variant(session="S-other"), "session: unknown session 'S-other'"),
        (variant(type="counts_batch", payload=nan_counts), "payload.items[0].counts[0]: Input should be a finite number"),
        (variant(payload=dict(head["payload"], dropped_frames=-2)), "payload.dropped_frames: Input should be greater than or equal to 0"),
        (variant(sender="someone-else"), "sender: 'someone-else' does not match"),
    ]


def test_bad_input_to_the_server_is_logged_and_the_loop_keeps_running(closing, caplog):
    srv = server(closing, limits=m.Limits(max_header_bytes=3000))
    got = []
    srv.on("presentation_report", lambda msg: got.append(msg.payload.presentation_id))
    srv.start()
    cl = peer(closing, srv).start()
    assert cl.wait_connected(15)
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.ROUTING_ID, b"display-1")  # pretends to be the connected client
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(srv.endpoint)
    closing(raw)
    cases = _bad_inputs()
    with caplog.at_level(logging.WARNING, logger="snslab.wire"):
        for frames, _ in cases:
            raw.send_multipart(frames)
        answers = []
        while len(answers) < len(cases):
            assert raw.poll(15000), f"only {len(answers)} answers"
            env, _ = m.decode(raw.recv_multipart())
            if env.type in ("nack", "error"):
                answers.append(env)
        cl.send("presentation_report", report("after"))
        assert wait_for(lambda: got == ["after"])
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(lines) == len(cases)
    for (frames, expected), line in zip(cases, lines):
        assert expected in line and "\n" not in line
    # readable ids are nacked (the sender stops retrying), unreadable ones get an error, and a session the
    # server has not opened gets error{unknown_session} (retry later, never a final refusal)
    errors = [a.payload.code for a in answers if a.type == "error"]
    assert sorted(errors) == ["bad_message", "unknown_session"]
    assert srv.stats["rejected"] == len(cases)
    # a client that never said hello is asked to
    stranger = zmq.Context.instance().socket(zmq.DEALER)
    stranger.setsockopt(zmq.ROUTING_ID, b"bridge-7")
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.connect(srv.endpoint)
    closing(stranger)
    stranger.send_multipart(m.encode(m.Envelope.make("presentation_report", report("x"), session="S1", sender="bridge-7")))
    assert stranger.poll(15000)
    env, _ = m.decode(stranger.recv_multipart())
    assert env.type == "error" and env.payload.code == "hello_required"


def test_bad_input_to_a_client_is_logged_and_the_loop_keeps_running(closing, caplog):
    raw = RawServer(closing)
    cl = peer(closing, raw.port, limits=m.Limits(max_header_bytes=3000))
    batches = []
    cl.on("stimulus_batch", lambda msg: batches.append(msg.payload.batch_id))
    assert raw.serve(lambda: cl.connected, peers=[cl])
    b, imgs = batch(2)
    good = m.encode(m.Envelope.make("stimulus_batch", b, session="S1", sender="server"), imgs)
    head = json.loads(good[0])
    cases = [
        [b"\x00\x01binary"],
        [good[0], good[1]],  # a frame missing
        [json.dumps(dict(head, id=uuid.uuid4().hex, type="reboot")).encode()],
        [json.dumps(dict(head, id=uuid.uuid4().hex, session="S-old")).encode(), *good[1:]],
        [good[0], good[1], bytes(good[2]) + b"\x00"],  # image bytes do not match the header
        [json.dumps(dict(head, id=uuid.uuid4().hex)).encode() + b" " * 3000, *good[1:]],
    ]
    with caplog.at_level(logging.WARNING, logger="snslab.wire"):
        for frames in cases:
            raw.send(frames)
        raw.send(good)
        assert raw.serve(lambda: batches == ["b0"], peers=[cl])
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(lines) == len(cases)
    for needle, line in zip(
        ["header: malformed JSON", "n_blobs: header says 2", "type: unknown message type 'reboot'",
         "session: unknown session 'S-old'", "blob[1]: 49 bytes but 4x4x3 uint8 needs 48", "header: 3"],
        lines,
    ):  # fmt: skip
        assert needle in line
    assert cl.connected and cl.stats["rejected"] == len(cases)
    answers = lambda kind: [e for e in raw.seen if e.type == kind]  # noqa: E731
    assert raw.serve(lambda: len(answers("nack")) + len(answers("error")) == len(cases), peers=[cl])
    assert len(answers("error")) == 1  # the unreadable one
    assert [e.payload.reason.split(":")[0] for e in answers("nack")] == ["n_blobs", "type", "session", "blob[1]", "header"]


def test_log_lines_are_rate_limited(closing, caplog):
    srv = server(closing)
    srv.start()
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(srv.endpoint)
    closing(raw)
    with caplog.at_level(logging.WARNING, logger="snslab.wire"):
        for _ in range(100):
            raw.send_multipart([b"garbage"])
        assert wait_for(lambda: srv.stats["rejected"] == 100)
    assert sum("rejected" in r.getMessage() for r in caplog.records) == 20


def test_rejection_log_keeps_a_burst_per_window_and_summarises_the_rest(caplog):
    """A flooding peer gets log_burst lines per window; the next window opens with the count it dropped."""
    limiter = RejectionLog(logging.getLogger("snslab.wire"), "test", burst=3, window_s=10.0)
    with caplog.at_level(logging.WARNING, logger="snslab.wire"):
        allowed = [limiter.allow(t) for t in (0.0, 1.0, 2.0, 3.0, 9.9, 10.5, 11.0)]
    assert allowed == [True, True, True, False, False, True, True]
    assert [r.getMessage() for r in caplog.records] == ["suppressed 2 further rejection messages in the last 10 s"]
    assert Timing().log_burst == 20 and Timing().log_window_s == 10.0


def test_deep_json_is_refused_before_decoding_and_gone_clients_are_forgotten(closing):
    # 100k nested brackets: a one-line refusal, no RecursionError
    with pytest.raises(m.ProtocolError, match=r"header: JSON nested 100000 deep, at most 32"):
        m.decode([b"[" * 100_000 + b"]" * 100_000])
    assert m.peek_id(b"{" * 50_000) == (None, None)
    srv = server(closing, timing=Timing(heartbeat_s=0.05, heartbeat_misses=2, forget_after_s=0.3)).start()
    for k in range(20):
        cl = peer(closing, srv, client_id=f"display-{k}").start()
        assert cl.wait_connected(15)
        cl.close()
    assert wait_for(lambda: srv.clients() == [] and srv.stats["forgotten"] == 20)
