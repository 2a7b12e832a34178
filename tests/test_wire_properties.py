"""Property-based tests of every wire message decoder (hypothesis): whatever bytes or JSON arrive, decode
either returns a valid envelope or raises a one-line ProtocolError naming a field; never anything else
(no RecursionError, KeyError, TypeError...). Valid messages of every type survive encode -> decode."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wire import messages as m

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TYPES = sorted(m.PAYLOADS)
ids = st.from_regex(r"[A-Za-z0-9_.:/-]{1,20}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _check(frames):
    try:
        env, _ = m.decode(frames)
    except m.ProtocolError as e:
        text = str(e)
        assert "\n" not in text and ": " in text, text
        return None
    assert env.type in m.PAYLOADS
    return env


@SETTINGS
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=4))
def test_any_bytes_decode_or_give_a_one_line_refusal(frames):
    if frames:
        _check(frames)


@SETTINGS
@given(st.sampled_from(TYPES), json_values, st.dictionaries(st.sampled_from(
    ["v", "id", "type", "session", "sender", "sent_at", "n_blobs", "reliable"]), json_values, max_size=4))
def test_every_type_with_any_payload_decodes_or_is_refused_naming_a_field(mtype, payload, overrides):
    head = {"v": 1, "id": "a" * 32, "type": mtype, "session": "S1", "sender": "display-1", "sent_at": 1.0,
            "n_blobs": 0, "reliable": False, "payload": payload} | overrides
    _check([json.dumps(head, allow_nan=True).encode()])


@SETTINGS
@given(st.integers(1, 5000), st.sampled_from([b"[", b"{", b'{"a":[']))
def test_deep_nesting_is_a_refusal_not_a_recursion_error(depth, opener):
    _check([opener * depth])


report = st.builds(lambda pid, gen, order, attempt, t: {
    "presentation_id": pid, "batch_id": "b0", "generation": gen, "stimulus_id": "s0", "order": order,
    "attempt": attempt, "flip_time": t, "offset_time": t + 0.1, "frames_on": 6, "frames_off": 6,
    "refresh_hz": 60.0, "on_duration_s": 0.1, "dropped_frames": 0, "marker_sent": False},
    ids, st.integers(0, 10**6), st.integers(0, 4095), st.integers(0, 1000), st.floats(0, 1e9))
counts = st.builds(lambda pids, n_units, c: {
    "seq": 1, "units": [f"u{i}" for i in range(n_units)],
    "items": [{"presentation_id": p, "counts": [c] * n_units, "onset_source": "ttl", "valid": True} for p in pids]},
    st.lists(ids, min_size=1, max_size=5, unique=True), st.integers(1, 8), st.integers(0, 1_000_000))
payloads = st.one_of(
    st.tuples(st.just("heartbeat"), st.builds(lambda n: {"pending": n}, st.integers(0, 10**6))),
    st.tuples(st.just("ack"), st.just({"ack_of": "b" * 32})),
    st.tuples(st.just("nack"), st.builds(lambda r: {"ack_of": "b" * 32, "reason": r}, st.text(max_size=50))),
    st.tuples(st.just("control"), st.builds(lambda a: {"action": a, "reason": "x"},
                                            st.sampled_from(["pause", "resume", "stop", "clear"]))),
    st.tuples(st.just("presentation_report"), report),
    st.tuples(st.just("counts_batch"), counts),
    st.tuples(st.just("hello"), st.builds(lambda r: {"role": r, "client_id": "display-1", "instance": "c" * 32,
                                                     "software": "t", "capabilities": {}},
                                          st.sampled_from(["display", "bridge", "monitor"]))),
)


@SETTINGS
@given(payloads)
def test_valid_messages_of_every_type_survive_a_round_trip(item):
    mtype, payload = item
    env = m.Envelope.make(mtype, payload, session="S1", sender="display-1")
    back, blobs = m.decode(m.encode(env))
    assert back == env and blobs == []


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 6), st.binary(min_size=0, max_size=200))
def test_stimulus_batch_blobs_must_match_their_images(h, w, junk):
    img = np.zeros((h, w, 3), np.uint8)
    batch = m.StimulusBatch(batch_id="b0", generation=0, images=[m.ImageSpec.of("s0", img)],
                            presentations=[m.Presentation(presentation_id="p0", stimulus_id="s0", image=0, order=0)])
    frames = m.encode(m.Envelope.make("stimulus_batch", batch, session="S1", sender="server"), [img])
    assert _check(frames) is not None
    env = _check([frames[0], junk])  # a blob of the wrong size is refused, never misread
    assert env is None or len(junk) == h * w * 3
