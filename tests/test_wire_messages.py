"""Envelope round trips with binary images, and every way a message can be refused (field named)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wire import messages as m
from wire.ledger import PresentationLedger


def make_batch(n_images=3, n_pres=None, h=5, w=7, seed=0, batch_id="b0"):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n_images)]
    specs = [m.ImageSpec.of(f"s{i}", img) for i, img in enumerate(images)]
    n_pres = n_images if n_pres is None else n_pres
    pres = [
        m.Presentation(presentation_id=f"{batch_id}-p{k}", stimulus_id=f"s{k % n_images}", image=k % n_images, order=k)
        for k in range(n_pres)
    ]
    return m.StimulusBatch(batch_id=batch_id, generation=2, images=specs, presentations=pres), images


def counts_env(**item_changes):
    item = dict(presentation_id="p0", counts=[1, 0, 7], baseline_counts=[0, 1, 2], onset_source="photodiode", valid=True)
    item.update(item_changes)
    return m.Envelope.make("counts_batch", dict(seq=4, units=["u0", "u1", "u2"], items=[item]), session="S1", sender="bridge")


def mutate(frames, fn):
    header = json.loads(frames[0])
    fn(header)
    return [json.dumps(header).encode(), *frames[1:]]


def reason(frames, **kw) -> str:
    with pytest.raises(m.ProtocolError) as err:
        m.decode(frames, **kw)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_batch_round_trip_keeps_pixels_and_fields():
    batch, images = make_batch(n_images=3, n_pres=5)
    env = m.Envelope.make("stimulus_batch", batch, session="S1", sender="server")
    frames = m.encode(env, images)
    assert len(frames) == 4 and [len(f) for f in frames[1:]] == [5 * 7 * 3] * 3
    got, blobs = m.decode(frames, session="S1")
    assert got.id == env.id and got.type == "stimulus_batch" and got.reliable and got.n_blobs == 3
    assert got.payload == batch
    for spec, blob, img in zip(got.payload.images, blobs, images):
        assert np.array_equal(m.blob_to_image(blob, spec), img)
    assert [p.image for p in got.payload.presentations] == [0, 1, 2, 0, 1]


def test_float_images_become_rounded_uint8():
    img = np.array([[[0.0, 0.5, 1.0], [0.2, 1.2, -0.1]]], dtype=np.float32)
    blob = m.image_to_blob(img)
    assert list(blob) == [0, 128, 255, 51, 255, 0]
    with pytest.raises(m.ProtocolError, match="NaN"):
        m.image_to_blob(np.full((1, 1, 3), np.nan, np.float32))
    with pytest.raises(m.ProtocolError, match=r"shape \(2, 2\)"):
        m.image_to_blob(np.zeros((2, 2)))


def test_counts_round_trip():
    frames = m.encode(counts_env())
    env, blobs = m.decode(frames)
    assert blobs == [] and env.payload.items[0].counts == [1, 0, 7] and env.payload.units == ["u0", "u1", "u2"]


@pytest.mark.parametrize(
    "change, field, words",
    [
        (lambda h: h["payload"]["items"][0]["counts"].__setitem__(1, float("nan")), "payload.items[0].counts[1]", "finite"),
        (lambda h: h["payload"]["items"][0]["counts"].__setitem__(2, -3), "payload.items[0].counts[2]", "greater than"),
        (lambda h: h["payload"]["items"][0]["baseline_counts"].__setitem__(0, 1.5), "payload.items[0].baseline_counts[0]", "integer"),
        (lambda h: h["payload"]["items"][0]["counts"].append(3), "payload.items[0].counts", "4 values for 3 units"),
        (lambda h: h["payload"]["items"][0].__setitem__("onset_rig_s", float("inf")), "payload.items[0].onset_rig_s", "finite"),
        (lambda h: h["payload"]["items"][0].__setitem__("onset_source", "guess"), "payload.items[0].onset_source", "photodiode"),
        (lambda h: h["payload"].__setitem__("extra", 1), "payload.extra", "not permitted"),
        (lambda h: h["payload"].pop("seq"), "payload.seq", "required"),
        (lambda h: h.__setitem__("id", "not-hex"), "id", "pattern"),
        (lambda h: h.__setitem__("session", ""), "session", "only a hello"),
        (lambda h: h.__setitem__("sent_at", float("nan")), "sent_at", "finite"),
    ],
)
def test_bad_counts_values_name_the_field(change, field, words):
    text = reason(mutate(m.encode(counts_env()), change))
    assert text.startswith(field + ": ") and words in text


def test_framing_errors():
    batch, images = make_batch(n_images=2)
    frames = m.encode(m.Envelope.make("stimulus_batch", batch, session="S1", sender="server"), images)
    assert reason([]) == "frames: empty message"
    assert reason([b"{not json", *frames[1:]]).startswith("header: malformed JSON")
    assert reason([b"[1, 2]"]) == "header: a JSON object is needed, got list"
    assert reason([b"\xff\xfe"]).startswith("header: malformed JSON")
    assert reason(frames[:2]) == "n_blobs: header says 2 binary frames, got 1"
    assert reason([*frames, b"x"]) == "n_blobs: header says 2 binary frames, got 3"
    short = reason([frames[0], frames[1], bytes(frames[2])[:-1]])
    assert short.startswith("blob[1]: 104 bytes but 5x7x3 uint8 needs 105")
    assert reason(mutate(frames, lambda h: h.__setitem__("type", "launch"))).startswith(
        "type: unknown message type 'launch' (allowed: ack, control, counts_batch, error,"
    )
    assert reason(mutate(frames, lambda h: h.__setitem__("v", 2))) == "v: unsupported protocol version 2 (supported: 1)"
    assert reason(mutate(frames, lambda h: h.pop("payload"))) == "payload: missing"
    bad_image = mutate(frames, lambda h: h["payload"]["presentations"][1].__setitem__("image", 5))
    assert reason(bad_image) == "payload.presentations[1].image: index 5 but only 2 images"
    dup = mutate(frames, lambda h: h["payload"]["presentations"][1].__setitem__("presentation_id", "b0-p0"))
    assert reason(dup) == "payload.presentations[1].presentation_id: duplicate 'b0-p0'"


def test_unknown_session_and_error_carries_message_id():
    frames = m.encode(counts_env())
    with pytest.raises(m.ProtocolError) as err:
        m.decode(frames, session="S2")
    assert str(err.value) == "session: unknown session 'S1' (this endpoint serves 'S2')"
    assert err.value.code == "unknown_session" and err.value.ref == json.loads(frames[0])["id"]


def test_oversized_parts_are_refused_before_parsing():
    small = m.Limits(max_header_bytes=2000, max_blob_bytes=100, max_message_bytes=4000, max_blobs=2, max_image_side=6)
    batch, images = make_batch(n_images=1, h=5, w=7)  # 105-byte image
    frames = m.encode(m.Envelope.make("stimulus_batch", batch, session="S1", sender="server"), images)
    assert reason(frames, limits=small) == "blob[0]: 105 bytes, at most 100"
    assert reason([b" " * 2001], limits=small) == "header: 2001 bytes, at most 2000"
    assert reason([frames[0], b"", b"", b""], limits=small) == "n_blobs: 3 binary frames, at most 2"
    assert reason([frames[0], b"x" * 90, b"x" * 90, b"x" * 90], limits=m.Limits(max_message_bytes=600)).startswith(
        "size: message is"
    )
    big, big_images = make_batch(n_images=1, h=4, w=8)
    frames = m.encode(m.Envelope.make("stimulus_batch", big, session="S1", sender="server"), big_images)
    assert reason(frames, limits=small) == "payload.images[0]: 4x8 exceeds the largest side 6"
    # the sender checks the same limits, so a bad message never leaves
    with pytest.raises(m.ProtocolError, match=r"^blob\[0\]: 105 bytes, at most 100$"):
        m.encode(m.Envelope.make("stimulus_batch", batch, session="S1", sender="server"), images, small)


def test_make_refuses_unknown_type_and_mismatched_payload():
    with pytest.raises(m.ProtocolError, match="^type: unknown message type 'launch'"):
        m.Envelope.make("launch", {}, session="S1", sender="x")
    with pytest.raises(m.ProtocolError, match="^payload.ack_of: Field required"):
        m.Envelope.make("ack", {}, session="S1", sender="x")
    with pytest.raises(m.ProtocolError, match="a heartbeat message needs a Heartbeat payload"):
        m.Envelope.make("heartbeat", m.Ack(ack_of="0" * 32), session="S1", sender="x")
    hello = m.Envelope.make(
        "hello", dict(role="display", client_id="d1", instance="a" * 32), session="", sender="d1"
    )  # only a hello may come without a session
    assert hello.session == "" and not hello.reliable


def test_reliable_types():
    assert m.RELIABLE_TYPES == {"stimulus_batch", "presentation_report", "counts_batch", "spikes_batch", "control"}
    assert m.Envelope.make("control", {"action": "pause"}, session="S", sender="x").reliable
    assert not m.Envelope.make("heartbeat", {}, session="S", sender="x").reliable


def report(pid, attempt=0, **kw):
    base = dict(
        presentation_id=pid, batch_id="b0", generation=2, stimulus_id="s0", order=0, attempt=attempt, flip_time=1.0,
        offset_time=1.1, frames_on=6, frames_off=6, refresh_hz=60.0, on_duration_s=0.1, dropped_frames=0,
        marker_sent=True,
    )  # fmt: skip
    base.update(kw)
    return m.PresentationReport(**base)


def test_ledger_exactly_once_and_outstanding_batches():
    batch, images = make_batch(n_images=3, n_pres=6)
    blobs = [m.image_to_blob(i) for i in images]
    ledger = PresentationLedger()
    ledger.add_batch(batch, blobs)
    ids = [p.presentation_id for p in batch.presentations]
    assert ledger.outstanding() == ids
    assert ledger.record(report(ids[0])) == "new"
    assert ledger.record(report(ids[0])) == "duplicate"
    assert ledger.record(report("nobody")) == "unknown"
    assert ledger.record(report(ids[3])) == "new"
    assert ledger.record(report(ids[4])) == "new"
    (sub, sub_blobs), = ledger.outstanding_batches()
    # p1 (image 1), p2 (image 2), p5 (image 2): images 1 and 2 only, re-indexed 0 and 1
    assert [p.presentation_id for p in sub.presentations] == [ids[1], ids[2], ids[5]]
    assert [p.image for p in sub.presentations] == [0, 1, 1] and [p.attempt for p in sub.presentations] == [0, 0, 0]
    assert sub_blobs == [blobs[1], blobs[2]] and [s.stimulus_id for s in sub.images] == ["s1", "s2"]
    # the cut-down batch is a valid message
    env, _ = m.decode(m.encode(m.Envelope.make("stimulus_batch", sub, session="S1", sender="server"), sub_blobs))
    assert env.payload == sub
    (again, _), = ledger.outstanding_batches()
    # a re-delivery is the same presentation: its attempt is the stored one (a re-show gets a new id)
    assert [p.attempt for p in again.presentations] == [0, 0, 0]
    assert ledger.cancel([ids[5]]) == 1 and ledger.outstanding() == [ids[1], ids[2]]
    for pid in ids[1:3]:
        ledger.record(report(pid))
    assert ledger.complete and ledger.outstanding_batches() == [] and ledger.duplicates == 1
    with pytest.raises(ValueError, match="already dispatched"):
        ledger.add_batch(batch, blobs)
