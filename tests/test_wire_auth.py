"""ZeroMQ CURVE + ZAP (wire/auth.py): only listed client keys, each bound to one role and one client id.

A live session runs on the simulated rig with a keyed display and a keyed bridge (keys made by the
``snslab keys init`` command). Meanwhile: a client without keys, a client with an unlisted key, a bridge
key claiming the display's id, and a display key sending counts. None of them gets a welcome or a
stimulus; the display key's counts are refused; nothing any of them sent is stored.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth
from sqlalchemy import text

from server.service import SessionCreate, SessionService
from test_live_loop import FAST, PROBE, _bridge, _reference_code
from wire import messages as m
from wire.auth import ClientKeys, ServerKeys, check_user, is_loopback, read_listing

pytest_plugins = ["db_fixtures"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys") / "rig"
    out = subprocess.run([sys.executable, "-m", "server.cli", "keys", "init", str(folder), "--display", "display-1",
                          "--bridge", "bridge-1"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    again = subprocess.run([sys.executable, "-m", "server.cli", "keys", "init", str(folder)], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already holds server keys" in again.stderr and "Traceback" not in again.stderr
    return folder


def test_listing_binds_each_key_to_one_role_and_client_id(keys):
    listing = read_listing(keys / "clients.txt")
    assert sorted(listing.values()) == [("bridge", "bridge-1"), ("display", "display-1")]
    pub, _ = zmq.auth.load_certificate(str(keys / "display-1.key"))
    assert listing[pub] == ("display", "display-1")
    assert check_user("display:display-1", "display-1", "display") is None
    assert check_user("display:display-1", "display-1", "bridge") == "role: this key belongs to a display, not a bridge"
    assert check_user("bridge:bridge-1", "display-1", None).startswith("sender: this key belongs to client 'bridge-1'")
    assert is_loopback("tcp://127.0.0.1:5555") and not is_loopback("tcp://*:5555")
    assert not is_loopback("tcp://0.0.0.0:5555") and is_loopback("tcp://[::1]:5")


def _raw(address, ctx, *, client_id, keypair=None, server_public=None):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.ROUTING_ID, client_id.encode())
    s.setsockopt(zmq.LINGER, 0)
    if keypair is not None:
        s.curve_publickey, s.curve_secretkey = keypair
        s.curve_serverkey = server_public
    s.connect(address)
    return s


def _hello(client_id, role, session=""):
    env = m.Envelope.make("hello", {"role": role, "client_id": client_id, "instance": "a" * 32,
                                    "software": "attacker", "capabilities": {"needs_images": True}},
                          session=session, sender=client_id)
    return m.encode(env)


def _drain(sock, seconds):
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sock.poll(50):
            frames = sock.recv_multipart()
            got.append(m.decode(frames)[0])
    return got


def test_only_listed_keys_get_in_and_a_key_acts_only_as_its_role_and_id(keys, repo, db_engine, tmp_path):
    server_keys = ServerKeys.load(keys)
    service = SessionService(repo, bind="tcp://127.0.0.1:*", timing=FAST, endpoint_options={"keys": server_keys})
    address = service.wire_address
    ctx = zmq.Context()
    attackers = []
    display = bridge = None
    try:
        # the rig: keyed display (a scripted peer) and keyed sim bridge
        from test_live_loop import ScriptedDisplay

        display = ScriptedDisplay(address, client_id="display-1", keys=ClientKeys.load(keys, "display-1"))
        bridge, stop, th = _bridge_with_keys(address, keys)
        assert display.peer.wait_connected(15) and bridge.peer.wait_connected(15)

        stranger_pair = zmq.curve_keypair()
        server_public = server_keys.public
        bridge_pair = ClientKeys.load(keys, "bridge-1")
        display_pair = ClientKeys.load(keys, "display-1")
        no_keys = _raw(address, ctx, client_id="display-9")
        unlisted = _raw(address, ctx, client_id="display-2", keypair=stranger_pair, server_public=server_public)
        # a listed bridge key that claims to be a display, under another id than its own
        impostor = _raw(address, ctx, client_id="display-3", keypair=(bridge_pair.public, bridge_pair.secret),
                        server_public=server_public)
        attackers = [no_keys, unlisted, impostor]
        for s, (cid, role) in zip(attackers, [("display-9", "display"), ("display-2", "display"),
                                              ("display-3", "display")]):
            s.send_multipart(_hello(cid, role))

        ref = _reference_code(tmp_path)
        sid = service.create(SessionCreate(operator="t", subject_id="M1", probe=PROBE | {"generations": 3},
                                           reference={"source": "code", "path": str(ref)}, units=["sim:0"]))
        service.start(sid)
        # the listed display key under another client id, saying it is a bridge
        rogue = _raw(address, ctx, client_id="display-1x", keypair=(display_pair.public, display_pair.secret),
                     server_public=server_public)
        attackers.append(rogue)
        rogue.send_multipart(_hello("display-1x", "bridge"))
        # the listed display key, on the display itself, sending counts for open presentations
        nacks = []
        display.peer.on_nack = lambda mid, mtype, reason: nacks.append((mtype, reason))
        assert _until_true(lambda: service.loop.ledger.reports, 60)
        open_ids = list(service.loop.ledger.reports)[:3]
        display.peer.send("counts_batch", {"seq": 1, "units": ["sim:0"], "items": [
            {"presentation_id": i, "counts": [999], "onset_source": "ttl", "valid": True} for i in open_ids]})
        assert service.wait(sid, 300), service.loop.stats
        assert _until_true(lambda: nacks, 10)
        assert nacks[0][0] == "counts_batch" and "accepted from a bridge only" in nacks[0][1]
        answers = [_drain(s, 1.0) for s in attackers]
        # no keys / unlisted key: dropped in the handshake, nothing comes back at all
        assert answers[0] == [] and answers[1] == []
        # the bridge key claiming a display id, the display key claiming another id and the bridge role:
        # refused, no welcome, no stimulus
        for got in answers[2:]:
            assert got and all(a.type not in ("welcome", "stimulus_batch", "presentation_report") for a in got)
            assert any(a.type == "nack" and "this key belongs to" in a.payload.reason for a in got)
        assert {c["client_id"] for c in service.clients()} == {"display-1", "bridge-1"}
    finally:
        for s in attackers:
            s.close(0)
        ctx.term()
        if display is not None:
            display.close()
        if bridge is not None:
            stop.set()
            th.join(2)
            bridge.peer.close()
        service.close()
    with db_engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM responses r JOIN presentations p ON p.id = r.presentation_id"
                              " WHERE p.session_id = :s AND 999 = ANY(r.counts)"), {"s": sid}).scalar() == 0
    status = repo.session_summary(sid).status
    assert status == "completed"


def _until_true(cond, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _bridge_with_keys(address, keys):
    return _bridge(address, PROBE["seed"], "invariance", client_id="bridge-1", keys=str(keys))


def test_binding_beyond_loopback_needs_keys_or_insecure(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "server.cli", "server", *a], cwd=REPO,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    r = run("--wire", "tcp://*:5599")
    assert r.returncode == 2 and "binding beyond loopback needs --keys DIR" in r.stderr and "Traceback" not in r.stderr
    r = run("--wire", "tcp://0.0.0.0:5599", "--keys", str(tmp_path / "none"))
    assert r.returncode == 2 and "--keys:" in r.stderr and "server.key_secret" in r.stderr
