"""The one message envelope of the snslab wire protocol, its payloads, and the multipart framing.

A message travels as a ZeroMQ multipart message ``[header, blob0, blob1, ...]``: ``header`` is the
envelope as UTF-8 JSON, blobs are raw bytes (images as uint8 RGB rows, top row first). Images go in
binary frames because base64 JSON costs a third more bytes plus an encode/decode pass per image, and raw
pixels decode with ``np.frombuffer`` (no copy, no PNG decompression bomb, size known from the header
before any pixel is touched).

Example::

    import numpy as np
    from wire import messages as m

    img = np.zeros((4, 6, 3), np.uint8)
    batch = m.StimulusBatch(
        batch_id="g0", generation=0, images=[m.ImageSpec.of("s0", img)],
        presentations=[m.Presentation(presentation_id="p0", stimulus_id="s0", image=0, order=0)])
    frames = m.encode(m.Envelope.make("stimulus_batch", batch, session="S1", sender="server"), [img])
    env, blobs = m.decode(frames)
    assert env.payload.presentations[0].presentation_id == "p0"
    assert (m.blob_to_image(blobs[0], env.payload.images[0]) == img).all()

Everything that is wrong with a message raises :class:`ProtocolError` whose text is one line naming the
field (``payload.items[2].counts[0]: Input should be greater than or equal to 0 (got -1)``).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, model_validator

from snslab_common import spike_codec
from snslab_common.errors import SnslabError
from wire.depth import json_depth
from wire.units import UNIT_KEY_PATTERN

PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class Limits:
    """Size bounds checked on every received message (and on every sent one).

    ZeroMQ itself drops (and disconnects) any single frame over ``hard_frame_bytes`` before Python sees it,
    so a peer cannot make a receiver allocate unbounded memory; below that the protocol limits apply and
    produce a logged, one-line rejection.
    """

    max_header_bytes: int = 1 << 20  # envelope JSON
    max_blob_bytes: int = 2048 * 2048 * 3  # one image frame
    max_message_bytes: int = 256 << 20  # all frames of one message
    max_blobs: int = 512  # images per batch
    max_presentations: int = 4096  # presentations per batch
    max_image_side: int = 2048
    max_count_items: int = 4096  # presentations per counts batch
    max_units: int = 4096
    max_json_depth: int = 32  # nesting of the header JSON; our messages need 5

    @property
    def hard_frame_bytes(self) -> int:
        return 4 * max(self.max_header_bytes, self.max_blob_bytes)


LIMITS = Limits()


class ProtocolError(SnslabError, ValueError):
    """A message that breaks the protocol. ``str(err)`` is one line: ``<field>: <problem>``."""

    def __init__(self, field: str, problem: str, *, ref: str | None = None, code: str = "bad_message"):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.ref = ref  # id of the offending message when the header was readable
        self.code = code


# --------------------------------------------------------------------------------------------- payloads

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:/-]{1,128}$")]
SessionId = Annotated[str, Field(pattern=r"^([A-Za-z0-9][A-Za-z0-9_.:-]{0,63})?$")]
MessageId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
UnitKey = Annotated[str, Field(pattern=UNIT_KEY_PATTERN)]  # a unit name percent-encoded (wire.units)
Count = Annotated[int, Field(ge=0, le=1_000_000)]
Reason = Annotated[str, Field(max_length=500)]


class Payload(BaseModel):
    """Base of all payloads: unknown fields and NaN/inf floats are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    def check_blobs(self, blobs: Sequence[bytes | memoryview], limits: Limits) -> None:
        if blobs:
            raise ProtocolError("n_blobs", f"this message type carries no binary frames, got {len(blobs)}")


class Hello(Payload):
    """First message of a client, repeated after it lost the server. ``instance`` is new per process start,
    so the server can tell a restarted client (re-send everything outstanding) from a reconnect."""

    role: Literal["display", "bridge", "monitor"]
    client_id: Id
    instance: MessageId
    software: Annotated[str, Field(max_length=100)] = ""
    capabilities: Annotated[dict[Id, str | int | float | bool | None], Field(max_length=64)] = {}


class Welcome(Payload):
    """The server's answer to hello. A changed ``server_instance`` means the server restarted."""

    server_instance: MessageId
    heartbeat_s: Annotated[float, Field(gt=0, le=60)]
    heartbeat_misses: Annotated[int, Field(ge=1, le=100)]


class Heartbeat(Payload):
    pending: Annotated[int, Field(ge=0)] = 0  # un-acknowledged messages held by the sender


class Ack(Payload):
    ack_of: MessageId


class Nack(Payload):
    """The receiver read the message but refuses it; the sender must not retry it."""

    ack_of: MessageId
    reason: Reason


class Error(Payload):
    """A message that could not be processed and cannot be nacked (no readable id) or needs a hello first."""

    code: Literal["bad_message", "unknown_session", "hello_required", "unsupported_version", "internal"]
    reason: Reason
    ref: MessageId | None = None


class ImageSpec(Payload):
    """How to read one binary frame: uint8 RGB, ``height`` rows of ``width`` pixels, top row first."""

    stimulus_id: Id
    height: Annotated[int, Field(ge=1)]
    width: Annotated[int, Field(ge=1)]
    channels: Literal[3] = 3
    dtype: Literal["uint8"] = "uint8"

    @property
    def nbytes(self) -> int:
        return self.height * self.width * self.channels

    @classmethod
    def of(cls, stimulus_id: str, image: np.ndarray) -> "ImageSpec":
        h, w = np.asarray(image).shape[:2]
        return cls(stimulus_id=stimulus_id, height=h, width=w)


class Presentation(Payload):
    """One showing of one image. Durations are in ms and become frames at the display's measured refresh
    rate unless ``frames_on``/``frames_off`` fix them. ``attempt`` counts re-sends after a client restart."""

    presentation_id: Id
    stimulus_id: Id
    image: Annotated[int, Field(ge=0)]  # index into the batch's images (= blob index)
    order: Annotated[int, Field(ge=0)]
    on_ms: Annotated[float, Field(gt=0, le=10_000)] = 100.0
    off_ms: Annotated[float, Field(gt=0, le=10_000)] = 100.0
    frames_on: Annotated[int, Field(ge=1, le=10_000)] | None = None
    frames_off: Annotated[int, Field(ge=1, le=10_000)] | None = None  # >= 1: the offset is a flip of its own
    attempt: Annotated[int, Field(ge=0, le=1000)] = 0


class StimulusBatch(Payload):
    """Images (one binary frame each) and the presentations that show them, in ``order``."""

    batch_id: Id
    generation: Annotated[int, Field(ge=0)]
    images: list[ImageSpec]
    presentations: Annotated[list[Presentation], Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> "StimulusBatch":
        seen: set[str] = set()
        orders: set[int] = set()
        for i, p in enumerate(self.presentations):
            if p.image >= len(self.images):
                raise ValueError(f"presentations[{i}].image: index {p.image} but only {len(self.images)} images")
            if p.stimulus_id != self.images[p.image].stimulus_id:
                raise ValueError(
                    f"presentations[{i}].stimulus_id: {p.stimulus_id!r} but image {p.image} is "
                    f"{self.images[p.image].stimulus_id!r}"
                )
            if p.presentation_id in seen:
                raise ValueError(f"presentations[{i}].presentation_id: duplicate {p.presentation_id!r}")
            if p.order in orders:
                raise ValueError(f"presentations[{i}].order: duplicate order {p.order}")
            seen.add(p.presentation_id)
            orders.add(p.order)
        return self

    def check_blobs(self, blobs: Sequence[bytes | memoryview], limits: Limits) -> None:
        if len(self.images) > limits.max_blobs:
            raise ProtocolError("payload.images", f"{len(self.images)} images, at most {limits.max_blobs} per batch")
        if len(self.presentations) > limits.max_presentations:
            raise ProtocolError(
                "payload.presentations", f"{len(self.presentations)}, at most {limits.max_presentations} per batch"
            )
        if len(blobs) != len(self.images):
            raise ProtocolError("n_blobs", f"{len(self.images)} images described but {len(blobs)} binary frames")
        for i, (spec, blob) in enumerate(zip(self.images, blobs)):
            if max(spec.height, spec.width) > limits.max_image_side:
                raise ProtocolError(
                    f"payload.images[{i}]",
                    f"{spec.height}x{spec.width} exceeds the largest side {limits.max_image_side}",
                )
            if len(blob) != spec.nbytes:
                raise ProtocolError(
                    f"blob[{i}]", f"{len(blob)} bytes but {spec.height}x{spec.width}x3 uint8 needs {spec.nbytes}"
                )


class PresentationReport(Payload):
    """What the display did for one presentation. Times: ``flip_time`` on the display's own clock
    (PsychoPy), ``*_lsl`` on LSL ``local_clock()``; the marker ``pres:<presentation_id>`` carries exactly
    ``flip_time_lsl`` as its timestamp, so a repeated showing (after a restart) is told apart by time."""

    presentation_id: Id
    batch_id: Id
    generation: Annotated[int, Field(ge=0)]
    stimulus_id: Id
    order: Annotated[int, Field(ge=0)]
    attempt: Annotated[int, Field(ge=0)] = 0
    flip_time: float
    flip_time_lsl: float | None = None
    offset_time: float
    offset_time_lsl: float | None = None
    frames_on: Annotated[int, Field(ge=1)]
    frames_off: Annotated[int, Field(ge=1)]
    refresh_hz: Annotated[float, Field(gt=0)]
    on_duration_s: Annotated[float, Field(ge=0)]
    dropped_frames: Annotated[int, Field(ge=0)]
    marker_sent: bool
    ttl_word: Annotated[int, Field(ge=0, le=65535)] | None = None
    photodiode_patch: bool = False
    qc: list[Annotated[str, Field(max_length=100)]] = []  # e.g. "dropped_frames", "late_onset"


class CountsItem(Payload):
    """Spike counts of one presentation, one value per unit of the batch's ``units`` list."""

    presentation_id: Id
    counts: list[Count]
    baseline_counts: list[Count] | None = None
    window_ms: tuple[float, float] = (50.0, 200.0)
    baseline_window_ms: tuple[float, float] | None = (-50.0, 0.0)
    onset_rig_s: float | None = None
    onset_source: Literal["photodiode", "ttl", "marker", "flip", "simulated", "none"]
    valid: bool
    qc_reasons: list[Annotated[str, Field(max_length=200)]] = []


class CountsBatch(Payload):
    """The bridge's output. ``seq`` increases by one per batch so the server can see gaps."""

    seq: Annotated[int, Field(ge=0)]
    units: Annotated[list[UnitKey], Field(min_length=1)]
    items: list[CountsItem]

    @model_validator(mode="after")
    def _consistent(self) -> "CountsBatch":
        """What would make a receiver store part of a batch and refuse the rest (or refuse the same batch
        on every re-send) is refused as a whole here, naming the item."""
        n = len(self.units)
        seen: set[str] = set()
        for i, item in enumerate(self.items):
            if item.presentation_id in seen:
                raise ValueError(f"items[{i}].presentation_id: {item.presentation_id!r} appears twice in one batch")
            seen.add(item.presentation_id)
            if len(item.counts) != n:
                raise ValueError(f"items[{i}].counts: {len(item.counts)} values for {n} units")
            if item.baseline_counts is not None and len(item.baseline_counts) != n:
                raise ValueError(f"items[{i}].baseline_counts: {len(item.baseline_counts)} values for {n} units")
            for name in ("window_ms", "baseline_window_ms"):
                w = getattr(item, name)
                if w is not None and not w[1] > w[0]:
                    raise ValueError(f"items[{i}].{name}: the end must be after the start (got {list(w)})")
        return self

    def check_blobs(self, blobs: Sequence[bytes | memoryview], limits: Limits) -> None:
        super().check_blobs(blobs, limits)
        if len(self.units) > limits.max_units:
            raise ProtocolError("payload.units", f"{len(self.units)} units, at most {limits.max_units}")
        if len(self.items) > limits.max_count_items:
            raise ProtocolError("payload.items", f"{len(self.items)} items, at most {limits.max_count_items}")


class SpikeTrains(Payload):
    """One presentation's spike times, per unit, within ``window_ms`` around its onset (the response window
    plus a margin), so counts can be recomputed offline. The times are in blob ``blob``, unit after unit in
    the batch's ``units`` order, ``n[u]`` times for unit ``u``, each unit's times ascending: with ``dtype``
    ``dus16`` whole microseconds after ``onset_rig_s`` (rig clock) as 16-bit steps from ``window_ms[0]``
    (snslab_common.spike_codec); with ``<i4``/``<i8`` integer ns after it, little-endian."""

    presentation_id: Id
    onset_rig_s: float
    window_ms: tuple[float, float] = (-200.0, 500.0)
    n: list[Count]
    blob: Annotated[int, Field(ge=0)]
    dtype: Literal["<i4", "<i8", "dus16"] = "<i4"


class SpikesBatch(Payload):
    """The bridge's raw spike times (sent once the rig data has passed each presentation's window + margin,
    after its counts). ``clock`` is the model that put these times on the rig clock (source, offset_s,
    drift, ...): what an analyst needs to trust or redo the alignment."""

    seq: Annotated[int, Field(ge=0)]
    units: Annotated[list[UnitKey], Field(min_length=1)]
    clock: Annotated[dict[Id, str | int | float | bool | None], Field(max_length=32)] = {}
    items: list[SpikeTrains]

    @model_validator(mode="after")
    def _consistent(self) -> "SpikesBatch":
        n = len(self.units)
        seen: set[str] = set()
        blobs: set[int] = set()
        for i, item in enumerate(self.items):
            if item.presentation_id in seen:
                raise ValueError(f"items[{i}].presentation_id: {item.presentation_id!r} appears twice in one batch")
            seen.add(item.presentation_id)
            if len(item.n) != n:
                raise ValueError(f"items[{i}].n: {len(item.n)} values for {n} units")
            if item.blob in blobs:
                raise ValueError(f"items[{i}].blob: blob {item.blob} is used twice")
            blobs.add(item.blob)
            if not item.window_ms[1] > item.window_ms[0]:
                raise ValueError(f"items[{i}].window_ms: the end must be after the start (got {list(item.window_ms)})")
        return self

    def check_blobs(self, blobs: Sequence[bytes | memoryview], limits: Limits) -> None:
        if len(self.units) > limits.max_units:
            raise ProtocolError("payload.units", f"{len(self.units)} units, at most {limits.max_units}")
        if len(self.items) > limits.max_count_items:
            raise ProtocolError("payload.items", f"{len(self.items)} items, at most {limits.max_count_items}")
        if len(blobs) != len(self.items):
            raise ProtocolError("n_blobs", f"{len(self.items)} spike trains described but {len(blobs)} binary frames")
        for i, item in enumerate(self.items):
            if item.blob >= len(blobs):
                raise ProtocolError(f"payload.items[{i}].blob", f"index {item.blob} but only {len(blobs)} frames")
            problem = spike_codec.blob_problem(item.dtype, item.n, blobs[item.blob])
            if problem:
                raise ProtocolError(f"blob[{item.blob}]", problem)


class Control(Payload):
    """pause/resume presenting; stop: finish the current presentation and exit; clear: drop what is queued
    (the server cancels those presentations in its ledger)."""

    action: Literal["pause", "resume", "stop", "clear"]
    reason: Reason = ""


PAYLOADS: dict[str, type[Payload]] = {
    "hello": Hello,
    "welcome": Welcome,
    "heartbeat": Heartbeat,
    "ack": Ack,
    "nack": Nack,
    "error": Error,
    "stimulus_batch": StimulusBatch,
    "presentation_report": PresentationReport,
    "counts_batch": CountsBatch,
    "spikes_batch": SpikesBatch,
    "control": Control,
}
MessageType = Literal[
    "hello", "welcome", "heartbeat", "ack", "nack", "error",
    "stimulus_batch", "presentation_report", "counts_batch", "spikes_batch", "control",
]  # fmt: skip
# Acknowledged (tracked, re-sent, deduplicated by id) unless the sender says otherwise.
RELIABLE_TYPES = frozenset({"stimulus_batch", "presentation_report", "counts_batch", "spikes_batch", "control"})
# Never answered with nack/error, so two broken peers cannot ping-pong complaints.
SILENT_TYPES = frozenset({"ack", "nack", "error", "heartbeat", "welcome"})


# --------------------------------------------------------------------------------------------- envelope


class Envelope(BaseModel):
    """The one envelope every message has. ``session`` may be empty only in a hello (a client that does not
    yet know the server's session)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    v: Literal[1] = PROTOCOL_VERSION
    id: MessageId
    type: MessageType
    session: SessionId
    sender: Id
    sent_at: float
    n_blobs: Annotated[int, Field(ge=0)] = 0
    reliable: bool = False  # the sender waits for ack/nack and re-sends until then
    payload: SerializeAsAny[Payload]

    @model_validator(mode="after")
    def _payload_matches_type(self) -> "Envelope":
        want = PAYLOADS[self.type]
        if type(self.payload) is not want:
            raise ValueError(f"payload: a {self.type} message needs a {want.__name__} payload")
        if not self.session and self.type != "hello":
            raise ValueError("session: empty; only a hello may omit the session")
        return self

    @classmethod
    def make(
        cls,
        type: str,
        payload: Payload | dict[str, Any],
        *,
        session: str,
        sender: str,
        n_blobs: int = 0,
        reliable: bool | None = None,
    ) -> "Envelope":
        """Build an envelope with a fresh id; ``payload`` may be a dict validated against the type's model."""
        if type not in PAYLOADS:
            raise ProtocolError("type", f"unknown message type {type!r} (allowed: {', '.join(sorted(PAYLOADS))})")
        if isinstance(payload, dict):
            payload = _validate(PAYLOADS[type], payload, "payload")
        return _validate(
            cls,
            dict(
                id=uuid.uuid4().hex, type=type, session=session, sender=sender, sent_at=time.time(),
                n_blobs=n_blobs, reliable=type in RELIABLE_TYPES if reliable is None else reliable,
                payload=payload,
            ),
            "",
        )  # fmt: skip


def _fmt_error(err: ValidationError, prefix: str) -> ProtocolError:
    """First pydantic error as ``field: problem (got x)``, naming the field in dotted/indexed form."""
    errs = err.errors(include_url=False)
    e = errs[0]
    path = prefix
    for part in e["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    msg = str(e["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
        # our model validators put the field at the front: "items[3].counts: ..."
        head, sep, rest = msg.partition(": ")
        if sep and " " not in head:
            path = f"{path}.{head}" if path else head
            msg = rest
    elif e["type"] not in ("missing", "extra_forbidden") and "input" in e:
        got = repr(e["input"])
        msg += f" (got {got[:60] + '...' if len(got) > 60 else got})"
    if len(errs) > 1:
        msg += f" (+{len(errs) - 1} more)"
    return ProtocolError(path or "message", msg)


def _validate(model: type[BaseModel], data: Any, prefix: str):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _fmt_error(e, prefix) from None


# --------------------------------------------------------------------------------------------- framing


def _blob_bytes(blob: bytes | memoryview | np.ndarray) -> bytes | memoryview:
    if isinstance(blob, np.ndarray):
        return image_to_blob(blob)
    return blob


def encode(env: Envelope, blobs: Sequence[bytes | memoryview | np.ndarray] = (), limits: Limits = LIMITS) -> list:
    """Envelope + blobs -> multipart frames. numpy images are converted with :func:`image_to_blob`.
    The envelope's ``n_blobs`` is set from ``blobs``; the result is checked like a received message."""
    frames = [_blob_bytes(b) for b in blobs]
    if env.n_blobs != len(frames):
        env = env.model_copy(update={"n_blobs": len(frames)})
    header = env.model_dump_json().encode()
    out = [header, *frames]
    _check_sizes(out, limits)
    env.payload.check_blobs(frames, limits)
    return out


def _check_sizes(frames: Sequence[bytes | memoryview], limits: Limits) -> None:
    total = sum(len(f) for f in frames)
    if total > limits.max_message_bytes:
        raise ProtocolError("size", f"message is {total} bytes, at most {limits.max_message_bytes}")
    if len(frames[0]) > limits.max_header_bytes:
        raise ProtocolError("header", f"{len(frames[0])} bytes, at most {limits.max_header_bytes}")
    if len(frames) - 1 > limits.max_blobs:
        raise ProtocolError("n_blobs", f"{len(frames) - 1} binary frames, at most {limits.max_blobs}")
    for i, f in enumerate(frames[1:]):
        if len(f) > limits.max_blob_bytes:
            raise ProtocolError(f"blob[{i}]", f"{len(f)} bytes, at most {limits.max_blob_bytes}")


def peek_id(header: bytes | memoryview) -> tuple[str | None, str | None]:
    """Best-effort (id, type) of a header that failed validation, so the receiver can nack it."""
    try:
        raw = json.loads(bytes(header) if len(header) <= 65536 and json_depth(header) <= LIMITS.max_json_depth else b"")
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(raw, dict):
        return None, None
    mid, mtype = raw.get("id"), raw.get("type")
    mid = mid if isinstance(mid, str) and len(mid) == 32 and all(c in "0123456789abcdef" for c in mid) else None
    return mid, mtype if isinstance(mtype, str) else None


def decode(
    frames: Sequence[bytes | memoryview | Any], limits: Limits = LIMITS, *, session: str | None = None
) -> tuple[Envelope, list[memoryview]]:
    """Multipart frames -> (envelope, blobs). Raises :class:`ProtocolError` (one line, field named) on a
    malformed header, wrong frame count, unknown type or version, oversized parts, invalid payload values,
    or (when ``session`` is given) a non-hello message for another session."""
    frames = [f.buffer if hasattr(f, "buffer") else f for f in frames]  # zmq.Frame -> memoryview
    if not frames:
        raise ProtocolError("frames", "empty message")
    _check_sizes(frames, limits)
    if (depth := json_depth(frames[0])) > limits.max_json_depth:
        raise ProtocolError("header", f"JSON nested {depth} deep, at most {limits.max_json_depth}")
    try:
        raw = json.loads(bytes(frames[0]))  # NaN/Infinity parse, then fail validation naming the field
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ProtocolError("header", f"malformed JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(raw, dict):
        raise ProtocolError("header", f"a JSON object is needed, got {type(raw).__name__}")
    ref, _ = peek_id(frames[0])
    if raw.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            "v", f"unsupported protocol version {raw.get('v')!r} (supported: {PROTOCOL_VERSION})",
            ref=ref, code="unsupported_version",
        )  # fmt: skip
    mtype = raw.get("type")
    if not isinstance(mtype, str) or mtype not in PAYLOADS:  # (a list here is unhashable: found by hypothesis)
        raise ProtocolError(
            "type", f"unknown message type {str(mtype)[:40]!r} (allowed: {', '.join(sorted(PAYLOADS))})", ref=ref
        )
    if "payload" not in raw:
        raise ProtocolError("payload", "missing", ref=ref)
    try:
        payload = _validate(PAYLOADS[mtype], raw["payload"], "payload")
        env = _validate(Envelope, {**raw, "payload": payload}, "")
    except ProtocolError as e:
        e.ref = ref
        raise
    blobs = [memoryview(f) for f in frames[1:]]
    if env.n_blobs != len(blobs):
        raise ProtocolError("n_blobs", f"header says {env.n_blobs} binary frames, got {len(blobs)}", ref=ref)
    try:
        payload.check_blobs(blobs, limits)
    except ProtocolError as e:
        e.ref = ref
        raise
    if session is not None and env.type != "hello" and env.session != session:
        raise ProtocolError(
            "session", f"unknown session {env.session!r} (this endpoint serves {session!r})",
            ref=ref, code="unknown_session",
        )  # fmt: skip
    return env, blobs


# --------------------------------------------------------------------------------------------- images


def image_to_blob(image: np.ndarray) -> bytes:
    """(H, W, 3) image -> raw uint8 bytes. Floats are read as [0, 1] (the engine's convention) and rounded."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ProtocolError("image", f"shape {a.shape}, need (H, W, 3)")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise ProtocolError("image", f"dtype {a.dtype}, need uint8 or float in [0, 1]")
        if not np.all(np.isfinite(a)):
            raise ProtocolError("image", "contains NaN or infinite values")
        a = np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(a).tobytes()


def blob_to_image(blob: bytes | memoryview, spec: ImageSpec) -> np.ndarray:
    """Raw frame -> read-only (H, W, 3) uint8 array viewing the frame's memory (no copy)."""
    if len(blob) != spec.nbytes:
        raise ProtocolError("blob", f"{len(blob)} bytes but {spec.height}x{spec.width}x3 uint8 needs {spec.nbytes}")
    return np.frombuffer(blob, dtype=np.uint8).reshape(spec.height, spec.width, spec.channels)
