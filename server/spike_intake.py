"""The server's side of raw spike capture: stores each bridge's ``spikes_batch`` and its recording identity.

Attached to a LiveLoop (``attach(loop)``): spike trains are stored as they come (idempotent, so a re-sent
batch after a crash is a duplicate), reordered into the session's unit order; presentation ids are checked
against the database, not the loop's memory, so spike times that trail a server restart are still kept.
The bridge's recording identity (hello capabilities ``recording.*``) is stored once per identity when the
bridge's first counts or spikes of the session arrive.
"""

from __future__ import annotations

import logging
import uuid

import numpy as np

from snslab_common import spike_codec
from wire import Reject
from wire.units import unit_key

log = logging.getLogger("snslab.spikes")


def _identity(client) -> dict:
    caps = getattr(client, "capabilities", {}) or {}
    return {k[len("recording."):]: v for k, v in sorted(caps.items()) if k.startswith("recording.")}


def to_session_order(blob: bytes, dtype: str, n: np.ndarray, order: np.ndarray,
                     start_ms: float = 0.0) -> tuple[bytes, np.ndarray]:
    """Packed per-unit spike times (unit after unit, ``n`` each) rearranged so that unit ``order[k]`` of the
    batch comes k-th, in one gather (``dus16`` steps are decoded, gathered and encoded again)."""
    n = np.asarray(n, dtype=np.int64)
    if dtype == spike_codec.CODEC:
        base = spike_codec.base_us(start_ms)
        flat = spike_codec.decode_flat(n, blob, base)
        idx = _gather(n, order)
        return spike_codec.encode_flat(flat[idx], n[order], base), n[order]
    flat = np.frombuffer(blob, dtype=dtype)
    return flat[_gather(n, order)].tobytes(), n[order]


def _gather(n: np.ndarray, order: np.ndarray) -> np.ndarray:
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])[order]
    lens = n[order]
    return np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(lens.sum())


class SpikeIntake:
    def __init__(self, loop):
        self.loop = loop
        self.stored = 0
        self._identities: set[tuple[str, str]] = set()

    def note_client(self, msg) -> None:
        """Store the sending bridge's recording identity once (per identity) for this session."""
        repo = self.loop.repo
        if repo is None:
            return
        info = next((c for c in self.loop.endpoint.clients(alive_only=False) if c.client_id == msg.peer), None)
        if info is None or info.role != "bridge":
            return
        ident = _identity(info)
        key = (msg.peer, repr(ident))
        if not ident or key in self._identities:
            return
        from .db.spikes import store_recording

        store_recording(repo.engine, self.loop.session_id, msg.peer, ident)
        self._identities.add(key)

    def on_counts(self, msg) -> None:
        try:
            self.note_client(msg)
        except Exception:  # the identity is provenance: never let it block counts
            log.exception("could not store the bridge's recording identity")
        self.loop._on_counts(msg)

    def _session_of(self, msg) -> tuple[uuid.UUID, list[str]]:
        """The batch's session and its unit keys: the running one, or an earlier session of this endpoint
        whose last spike times trail its end (they follow the counts by the margin)."""
        loop = self.loop
        if msg.envelope.session == loop.wire_session:
            return loop.session_id, loop.unit_keys
        try:
            sid = uuid.UUID(msg.envelope.session)
        except ValueError:
            raise Reject(f"session: {msg.envelope.session!r} is not a session id") from None
        keys = [unit_key(spec.label) for _, spec in loop.repo.units(sid)]  # in position order, as wire keys
        if not keys:
            raise Reject(f"session: {sid} has no units in the database")
        return sid, keys

    def on_spikes(self, msg) -> None:
        loop = self.loop
        loop._check_sender(msg, "bridge")
        if loop.repo is None:
            loop._check_session(msg)
            return
        session_id, unit_keys = self._session_of(msg)
        position = {k: i for i, k in enumerate(unit_keys)}
        batch = msg.payload
        positions = []
        for key in batch.units:
            if key not in position:
                raise Reject(f"units: {key!r} is not a unit of this session (allowed: {', '.join(unit_keys)})")
            positions.append(position[key])
        if sorted(positions) != list(range(len(unit_keys))):
            raise Reject(f"units: the batch must carry every unit of the session ({len(unit_keys)})")
        from .db.spikes import STEPS, SpikeTrainRecord, store_spike_trains

        if session_id == loop.session_id:
            self.note_client(msg)
        order = np.argsort(positions)  # batch unit index for each session position
        identity = bool(np.all(order == np.arange(len(order))))
        records = []
        for it in batch.items:
            pid = loop._pid(it.presentation_id)
            if pid < 0:
                raise Reject(f"presentation_id: {it.presentation_id!r} is not a presentation of this session")
            blob, n = bytes(msg.blobs[it.blob]), np.asarray(it.n, dtype=np.int64)
            if not identity:
                blob, n = to_session_order(blob, it.dtype, n, order, it.window_ms[0])
            time_bytes = STEPS if it.dtype == spike_codec.CODEC else np.dtype(it.dtype).itemsize
            records.append(SpikeTrainRecord(pid, it.onset_rig_s, it.window_ms[0], it.window_ms[1], n,
                                            time_bytes, blob, dict(batch.clock)))
        inserted, unknown = store_spike_trains(loop.repo.engine, session_id, records)
        self.stored += inserted
        if unknown:
            raise Reject(f"presentation_id: {unknown[0]} is not a presentation of this session "
                         f"({len(unknown)} of {len(records)} spike trains refused)")


def attach(loop) -> SpikeIntake:
    intake = SpikeIntake(loop)
    loop.endpoint.on("spikes_batch", intake.on_spikes)
    loop.endpoint.on("counts_batch", intake.on_counts)
    loop.spike_intake = intake
    return intake
