"""Replay a recording from an NWB file through the normal bridge path (``snslab bridge --adapter nwb``).

For debugging and training: a stored session (``snslab export --nwb``), or any NWB file with ``units``
(spike times) and a stimulus table (``intervals/stimulus_presentations``, another TimeIntervals table, or
``trials``), is played back as if it were the rig. Each presentation the display reports is matched to a
recorded one, and its recorded onset and the recorded spikes around it are what the counter sees, on the
file's own clock:

- files exported by snslab: by (generation, slot, attempt) from the stimulus batches (the server re-runs
  the stored session with the same config and seed, so the same presentations come back in the same slots);
- other files: the n-th presentation shown gets the n-th row of the table (in start_time order).

Rig data is released as the display goes: up to the latest matched onset plus ``span_s`` (which must cover
the bridge's windows and spike margin), and no faster than ``speed`` times real time (0: as fast as the
display shows). A presentation with no recorded match is reported invalid, with the reason.

    src = NwbReplaySource("session.nwb", speed=4.0)
    src.set_key("812", (3, 5, 0))                  # from the stimulus batch
    src.add_marker(Marker("812", flip_s=...))      # from the display's report
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import numpy as np

from snslab_common.errors import ConfigError

from snslab_common.rejections import RejectionLog

from ..base import ONSET_SOURCES, Marker, Onset, SpikeEvent, SpikeSource

log = logging.getLogger(__name__)


def _column(table, name):
    return np.asarray(table[name].data[:]) if name in table.colnames else None


class NwbReplaySource(SpikeSource):
    name = "nwb"

    def __init__(self, path: str, speed: float = 1.0, table: str | None = None, span_s: float = 0.6,
                 clock: Callable[[], float] = time.monotonic):
        if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed >= 0):
            raise ConfigError("speed", f"{speed!r} is not a non-negative factor", "1 = real time, 0 = unpaced")
        if not (math.isfinite(span_s) and span_s > 0):
            raise ConfigError("span_s", f"{span_s!r} is not a positive number of seconds")
        try:
            from pynwb import NWBHDF5IO
        except ImportError as e:  # pragma: no cover - pynwb ships with the server and nwb extras
            raise ConfigError("adapter.nwb", f"pynwb cannot be imported here ({e})", "pip install pynwb") from e
        self.path, self.speed, self.span_s, self.clock = str(path), float(speed), float(span_s), clock
        try:
            io = NWBHDF5IO(self.path, "r")
        except (OSError, ValueError) as e:
            raise ConfigError("path", f"{path}: not a readable NWB file ({e})") from None
        with io:
            f = io.read()
            if f.units is None or len(f.units) == 0:
                raise ConfigError("path", f"{path}: the file has no units with spike times")
            keys = _column(f.units, "unit_key")
            ids = np.asarray(f.units.id[:])
            self._units = [str(k) for k in keys] if keys is not None else [f"nwb:{int(i)}" for i in ids]
            self._times = [np.sort(np.asarray(f.units["spike_times"][i], np.float64)) for i in range(len(ids))]
            tab = self._table(f, table)
            start = np.asarray(tab["start_time"].data[:], np.float64)
            gen, slot, att = (_column(tab, c) for c in ("generation", "order_in_batch", "attempt"))
            sup = _column(tab, "superseded")
            src = _column(tab, "onset_source")
            valid = _column(tab, "valid")
            qc = _column(tab, "qc_reasons")
        self.keyed = gen is not None and slot is not None
        order = np.argsort(start, kind="stable")
        self._rows: list[dict] = []
        self._by_key: dict[tuple, int] = {}
        for r in order:
            row = {
                "onset": float(start[r]),
                "source": str(src[r]) if src is not None and str(src[r]) in ONSET_SOURCES else "photodiode",
                "valid": bool(valid[r]) if valid is not None else True,
                "qc": tuple(x for x in str(qc[r]).split("; ") if x) if qc is not None else (),
            }
            self._rows.append(row)
            if self.keyed:
                k = (int(gen[r]), int(slot[r]), int(att[r]) if att is not None else 0)
                self._by_key[k] = len(self._rows) - 1
                if sup is None or not bool(sup[r]):  # the slot's answered attempt, for other attempts
                    self._by_key[(k[0], k[1], None)] = len(self._rows) - 1
        self._keys: dict[str, tuple] = {}
        self._next_row = 0
        self._onsets: list[Onset] = []
        self._gate = -math.inf  # rig data may be released up to here (latest matched onset + span)
        self._released = -math.inf
        self._first: tuple[float, float] | None = None  # (wall clock, file time) when playback started
        self._cursor = [0] * len(self._units)
        self.rejected = RejectionLog(log, "nwb")
        log.info("nwb: %s: %d units, %d presentations (%s)", self.path, len(self._units), len(self._rows),
                 "matched by generation/slot/attempt" if self.keyed else "matched in order")

    @staticmethod
    def _table(f, name):
        if name:
            if name in f.intervals:
                return f.intervals[name]
            if name == "trials" and f.trials is not None:
                return f.trials
            raise ConfigError("table", f"no table {name!r} in the file", sorted(f.intervals))
        if f.intervals and "stimulus_presentations" in f.intervals:
            return f.intervals["stimulus_presentations"]
        for t in (f.intervals or {}).values():
            return t
        if f.trials is not None:
            return f.trials
        raise ConfigError("table", "the file has no stimulus table (intervals or trials)")

    # ---- presentations -----------------------------------------------------------------------------
    def set_key(self, presentation_id: str, key: tuple[int, int, int]) -> None:
        """(generation, slot, attempt) of a dispatched presentation (from the server's stimulus batch)."""
        self._keys[presentation_id] = tuple(int(x) for x in key)

    def add_marker(self, marker: Marker) -> None:
        pid = marker.presentation_id
        if self.keyed:
            key = self._keys.get(pid)
            if key is None:
                return self._invalid(pid, "no stimulus batch named this presentation's slot")
            r = self._by_key.get(key, self._by_key.get((key[0], key[1], None)))
            if r is None:
                return self._invalid(pid, f"the recording has no presentation in generation {key[0]} slot {key[1]}")
        else:
            if self._next_row >= len(self._rows):
                return self._invalid(pid, "the recording has no more presentations")
            r = self._next_row
            self._next_row += 1
        row = self._rows[r]
        if self._first is None:
            self._first = (self.clock(), row["onset"] - 1.0)
        reasons = tuple(row["qc"]) + ("replayed from " + self.path.rsplit("/", 1)[-1],)
        self._onsets.append(Onset(pid, row["onset"], row["source"], row["valid"], reasons))
        self._gate = max(self._gate, row["onset"] + self.span_s)

    def _invalid(self, pid: str, reason: str) -> None:
        self.rejected(f"presentation {pid}: {reason}", "presentation")
        self._onsets.append(Onset(pid, None, "none", False, (reason,)))

    # ---- rig data ----------------------------------------------------------------------------------
    def _limit(self) -> float:
        if self._first is None:
            return -math.inf
        if self.speed == 0:
            return self._gate
        wall0, file0 = self._first
        return min(self._gate, file0 + (self.clock() - wall0) * self.speed)

    def poll(self, timeout_s: float = 0.0) -> list[SpikeEvent]:
        limit = self._limit()
        if limit <= self._released and timeout_s > 0:
            time.sleep(min(timeout_s, 0.01))
            limit = self._limit()
        if limit <= self._released:
            return []
        out: list[SpikeEvent] = []
        for u, times in enumerate(self._times):
            a = self._cursor[u]
            b = int(np.searchsorted(times, limit, "left"))
            if b > a:
                out.extend(SpikeEvent(self._units[u], float(t)) for t in times[a:b])
                self._cursor[u] = b
        self._released = limit
        out.sort(key=lambda e: e.rig_s)
        return out

    def poll_onsets(self) -> list[Onset]:
        out, self._onsets = self._onsets, []
        return out

    def watermark(self) -> float:
        return self._released

    def units(self) -> list[str]:
        return sorted(self._units)
