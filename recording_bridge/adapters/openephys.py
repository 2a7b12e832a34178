"""Open Ephys GUI source: a ZMQ subscriber to the Event Broadcaster plugin (JSON format).

Each message has two frames: ``[uint16 little-endian type (0 = TTL, 1 = spike), JSON]``.

- Spikes: ``electrode`` (name), ``sample_number``, ``sample_rate``, ``sorted_id`` (0 until the Spike Sorter
  assigns units). Unit key ``"<electrode>:<sorted_id>"``; ``include_unsorted=False`` drops sorted_id 0.
- TTL: ``line``, ``state``, ``sample_number`` (``sample_rate`` if present, else the configured one).

Rig time is ``sample_number / sample_rate``. The watermark is the latest rig time seen on any event minus
``lag_s`` (the GUI processes in buffers, so events within a buffer may arrive out of order).

Onsets (the convention the display must follow):

- TTL word: in ``win.callOnFlip`` the display raises the presentation's code (``alignment.ttl_code``, 1..255
  for 8 lines) on ``word_lines`` (bit i on ``word_lines[i]``) and returns all of them to 0 before the next
  presentation. A word starts when the lines leave 0; its code is the OR of the lines raised within
  ``settle_s`` of that (lines written by a USB DAQ arrive a few samples apart). Its time is the flip on the
  rig clock.
- Identity: the display's marker (presentation id, flip time on the display clock, code), delivered to
  ``add_marker`` (via the wire). Words are matched to markers by code, in order, and each pair feeds a
  rolling clock fit (display -> rig) used to place markers whose word went missing (flagged).
- Photodiode: if the photodiode is thresholded onto a TTL line (``photodiode_line``, e.g. via the Crossing
  Detector), its rising edges give the onset, matched in ``[flip - 1 frame, flip + 3 frames]``.

ZMQ PUB/SUB drops silently when a queue fills (the GUI's send queue under a burst): the receive queue here
is unbounded, a TTL line reported in the same state twice is logged as a lost event (``lost_ttl``), and a
marker whose TTL word never came is invalid ("missing TTL word"). An event older than the watermark (a late
event) and a silence longer than ``gap_s`` between consecutive events are faults: windows that touch them
are sent invalid with the reason. A single dropped *spike* cannot be seen in Event Broadcaster messages
(they carry no message number); set ``gap_s`` below the longest silence the rig's spike rate makes likely.
"""

from __future__ import annotations

import json
import logging
import math

import zmq

from snslab_common.errors import ConfigError
from snslab_common.rejections import RejectionLog

from ..alignment import Edge, OnsetAligner
from ..base import Fault, Marker, Onset, SpikeEvent, SpikeSource

log = logging.getLogger(__name__)

TTL_TYPE, SPIKE_TYPE = 0, 1
WORD_LINES = (0, 1, 2, 3, 4, 5, 6, 7)  # an 8-bit word: codes 1..255


class FrameError(ValueError):
    """A broadcaster message that cannot be used; the message is the one-line reason."""


def _int_field(info: dict, name: str, lo: int | None = 0) -> int:
    if name not in info:
        raise FrameError(f"missing field {name!r}")
    v = info[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FrameError(f"field {name!r} = {v!r} is not a number")
    if isinstance(v, float):
        if not math.isfinite(v) or v != int(v):
            raise FrameError(f"field {name!r} = {v!r} is not a whole number")
        v = int(v)
    if lo is not None and v < lo:
        raise FrameError(f"field {name!r} = {v!r} is below {lo}")
    return v


class OpenEphysSource(SpikeSource):
    name = "openephys"

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:5557",
        sample_rate: float | None = None,
        stream: str | None = None,
        units: list[str] | None = None,
        include_unsorted: bool = True,
        word_lines: tuple[int, ...] | list[int] = WORD_LINES,
        photodiode_line: int | None = None,
        settle_s: float = 0.001,
        frame_s: float = 1 / 60,
        lag_s: float = 0.02,
        ttl_tolerance_s: float = 0.1,
        gap_s: float = 1.0,
        max_messages: int = 20000,
        context: zmq.Context | None = None,
    ):
        word_lines = tuple(int(x) for x in word_lines)
        if not word_lines or len(set(word_lines)) != len(word_lines) or min(word_lines) < 0:
            raise ConfigError("word_lines", f"{word_lines!r} is not a list of distinct TTL lines", "lines >= 0")
        if photodiode_line is not None and photodiode_line in word_lines:
            raise ConfigError("photodiode_line", f"line {photodiode_line} is also a word line")
        if sample_rate is not None and not (math.isfinite(sample_rate) and sample_rate > 0):
            raise ConfigError("sample_rate", f"{sample_rate!r} is not a positive rate in Hz")
        for fname, v in (("settle_s", settle_s), ("lag_s", lag_s)):
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(fname, f"{v!r} is not a non-negative number of seconds")
        self.endpoint, self.sample_rate, self.stream = endpoint, sample_rate, stream
        self.include_unsorted = include_unsorted
        self.word_lines, self.photodiode_line = word_lines, photodiode_line
        self.settle_s, self.lag_s, self.gap_s, self.max_messages = settle_s, lag_s, gap_s, max_messages
        self._faults: list[Fault] = []
        self.aligner = OnsetAligner(
            photodiode=photodiode_line is not None, ttl=True, frame_s=frame_s, ttl_tolerance_s=ttl_tolerance_s
        )
        self._fixed_units = None if units is None else sorted(units)
        self._seen_units: set[str] = set()
        self._lines: dict[int, bool] = {}
        self._word_open: tuple[float, float, int] | None = None  # (rig_s, settle until, OR of words)
        self._latest = -math.inf  # latest rig time seen
        self._streams: set[str] = set()
        self.gaps = 0
        self.lost_ttl = 0
        self.rejected = RejectionLog(log, "openephys", per_shape=3)
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 0)  # never drop on our side
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)

    # ---- reading -----------------------------------------------------------------------------------
    def poll(self, timeout_s: float = 0.0) -> list[SpikeEvent]:
        out: list[SpikeEvent] = []
        if not self._poller.poll(int(max(0.0, timeout_s) * 1000)):
            self._close_word(self._latest)
            return out
        for _ in range(self.max_messages):
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                ev = self._handle(parts)
            except FrameError as e:
                self.rejected(str(e), "frame")
                continue
            if ev is not None:
                out.append(ev)
        self._close_word(self._latest)
        return out

    def _handle(self, parts: list[bytes]) -> SpikeEvent | None:
        if len(parts) != 2:
            raise FrameError(f"expected 2 frames [type, JSON], got {len(parts)}")
        if len(parts[0]) != 2:
            raise FrameError(f"type frame has {len(parts[0])} bytes, expected a 2-byte uint16")
        kind = int.from_bytes(parts[0], "little")
        if kind not in (TTL_TYPE, SPIKE_TYPE):
            raise FrameError(f"unknown message type {kind} (0 = TTL, 1 = spike)")
        try:
            info = json.loads(parts[1].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FrameError(f"JSON frame does not parse: {e}") from None
        if not isinstance(info, dict):
            raise FrameError(f"JSON frame is a {type(info).__name__}, not an object")
        etype = info.get("event_type")
        expected = "spike" if kind == SPIKE_TYPE else "ttl"
        if etype is not None and str(etype).lower() != expected:
            raise FrameError(f"type frame says {expected} but event_type is {etype!r}")
        stream = info.get("stream")
        if self.stream is not None and stream != self.stream:
            return None
        if stream is not None and stream not in self._streams:
            self._streams.add(stream)
            if len(self._streams) > 1 and self.stream is None:
                log.warning(
                    "openephys: events from several streams (%s) share one clock here; set stream=...",
                    ", ".join(sorted(map(str, self._streams))),
                )
        sample = _int_field(info, "sample_number")
        fs = info.get("sample_rate", self.sample_rate)
        if isinstance(fs, bool) or not isinstance(fs, (int, float)) or not math.isfinite(fs) or fs <= 0:
            raise FrameError(f"sample_rate {fs!r} is not a positive rate (and none is configured)")
        t = sample / fs
        if kind == SPIKE_TYPE:
            electrode = info.get("electrode")
            if not isinstance(electrode, str) or not electrode:
                raise FrameError(f"spike has electrode {electrode!r}, expected a name")
            sorted_id = _int_field(info, "sorted_id") if "sorted_id" in info else 0
            self._advance(t)
            if sorted_id == 0 and not self.include_unsorted:
                return None
            key = f"{electrode}:{sorted_id}"
            self._seen_units.add(key)
            return SpikeEvent(key, t)
        line = _int_field(info, "line")
        state = info.get("state")
        if state not in (0, 1, True, False):
            raise FrameError(f"TTL state {state!r} is not 0/1")
        self._advance(t)
        self._on_ttl(line, bool(state), t)
        return None

    def _advance(self, t: float) -> None:
        if t < self._latest - self.lag_s:
            self._faults.append(Fault(t, t, "late event: arrived after the watermark had passed it"))
            raise FrameError(f"event at {t:.6f} s is older than the watermark {self._latest - self.lag_s:.6f} s")
        if t > self._latest:
            if self.gap_s and math.isfinite(self._latest) and t - self._latest > self.gap_s:
                self.gaps += 1
                self._faults.append(Fault(self._latest, t, f"data gap: no events for {t - self._latest:.2f} s"))
                if self.gaps <= 3 or self.gaps % 100 == 0:
                    log.warning("openephys: no events for %.3f s of rig time (dropped messages?; %d gaps)",
                                t - self._latest, self.gaps)
            self._close_word(t)
            self._latest = t

    # ---- TTL words ---------------------------------------------------------------------------------
    def _word(self) -> int:
        return sum(1 << i for i, line in enumerate(self.word_lines) if self._lines.get(line, False))

    def _on_ttl(self, line: int, state: bool, t: float) -> None:
        before = self._lines.get(line)
        if before is not None and before == state:
            self.lost_ttl += 1  # a line cannot go high twice: the event in between never arrived
            if self.lost_ttl <= 3 or self.lost_ttl % 100 == 0:
                log.warning("openephys: TTL line %d went %s twice (at %.6f s): a TTL event was lost", line, int(state), t)
        before = bool(before)
        self._lines[line] = state
        if line == self.photodiode_line:
            if state and not before:
                self.aligner.add_edge(Edge(t, "photodiode"))
            return
        if line not in self.word_lines:
            return
        word = self._word()
        if self._word_open is not None:
            t0, until, acc = self._word_open
            self._word_open = (t0, until, acc | word)
        elif word and state and not before and self._word_from_zero(line):
            self._word_open = (t, t + self.settle_s, word)

    def _word_from_zero(self, line: int) -> bool:
        return all(not self._lines.get(x, False) for x in self.word_lines if x != line)

    def _close_word(self, now: float) -> None:
        """Finish the open word once rig time has passed its settle window."""
        if self._word_open is not None and now > self._word_open[1]:
            t0, _, code = self._word_open
            self._word_open = None
            self.aligner.add_edge(Edge(t0, "ttl", code))

    # ---- SpikeSource -------------------------------------------------------------------------------
    def add_marker(self, marker: Marker) -> None:
        """The display's marker: presentation id, flip time on the display clock, TTL code."""
        self.aligner.add_marker(marker)

    def poll_onsets(self) -> list[Onset]:
        return self.aligner.ready(self.watermark())

    def poll_faults(self) -> list[Fault]:
        out, self._faults = self._faults, []
        return out

    def watermark(self) -> float:
        wm = self._latest - self.lag_s
        if self._word_open is not None:
            wm = min(wm, self._word_open[0])  # an unfinished word is data we do not have yet
        return wm

    def units(self) -> list[str]:
        return list(self._fixed_units) if self._fixed_units is not None else sorted(self._seen_units)

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close(linger=0)
