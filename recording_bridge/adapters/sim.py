"""A simulated rig: a model neuron (snslab_common.neurons, by name) that sees the images actually shown.

Spike times are an inhomogeneous Poisson process per unit: the baseline rate everywhere, and the
subject's rate for the image during ``[onset + latency_s, onset + latency_s + response_s)``. Rig data
trails the clock by ``data_lag_s`` (the acquisition/transport delay of a real rig), so the watermark, and
therefore the counts, arrive late the way they do live.

Time is cut into blocks of ``block_s``; each block draws from its own generator derived from the session
generator and the block index, so the spikes do not depend on how often ``poll`` is called.

Keyed presentations (``count_seed`` set, ``present(..., key=(generation, order, attempt))``) match the
in-silico rig exactly: the response-period count of each unit is
``presentation_counts(rate, response_s, presentation_rng(count_seed, *key))`` (snslab_common.seeds) and the
spike times are further draws from that generator, placed uniformly in the period. With the defaults
(latency 50 ms, response 150 ms, no display lag) the period *is* the counter's [50, 200) ms window, so the
live counts equal the in-silico counts whatever the timing or poll rate. Example::

    import numpy as np
    class Flat:                           # any object with rate(images) -> (B, U) and n_units
        n_units = 1
        def rate(self, images): return np.full((len(images), 1), 40.0)
    t = [0.0]
    sim = SimSource(Flat(), rng=np.random.default_rng(0), clock=lambda: t[0], start_s=0.0)
    sim.present("p1", np.zeros((8, 8, 3), np.float32), flip_s=1.0)
    t[0] = 1.5; spikes = sim.poll()       # spikes up to 1.5 - data_lag_s
    (onset,) = sim.poll_onsets()          # Onset("p1", 1.0, "photodiode")
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from snslab_common.errors import ConfigError
from snslab_common.neurons import make_model_neuron
from snslab_common.rejections import RejectionLog
from snslab_common.seeds import presentation_counts, presentation_rng

from ..base import ONSET_SOURCES, Marker, Onset, SpikeEvent, SpikeSource

log = logging.getLogger(__name__)

_BLOCK_KEY_OFFSET = 1 << 40  # keeps block indices non-negative for SeedSequence
_GUARD_S = 1e-6  # keyed periods: no other spikes within 1 us of their edges, so edge rounding can't move one


@dataclass
class _Presentation:
    presentation_id: str
    onset_s: float
    start_s: float  # response period [start_s, end_s)
    end_s: float
    rate: np.ndarray  # (U,) spikes/s
    spikes: list[np.ndarray] | None = None  # keyed: the period's spike times per unit, drawn up front


def _load_subject(subject, subject_params):
    if isinstance(subject, str):
        subject = make_model_neuron(subject, **(subject_params or {}))
    elif subject_params:
        raise ConfigError("subject_params", "given with a subject object; pass them to the subject instead")
    if not callable(getattr(subject, "rate", None)):
        raise ConfigError("subject", f"{type(subject).__name__} has no rate(images) method", "an engine Subject")
    return subject


class SimSource(SpikeSource):
    """Poisson spikes from a model subject; onsets at ``flip_s + display_lag_s`` labelled ``onset_source``
    (default "photodiode": the simulated rig has an ideal photodiode)."""

    name = "sim"

    def __init__(
        self,
        subject,
        rng: np.random.Generator | int,
        subject_params: dict | None = None,
        latency_s: float = 0.050,
        response_s: float = 0.150,
        baseline_hz: float | list[float] = 5.0,
        display_lag_s: float = 0.0,
        data_lag_s: float = 0.020,
        block_s: float = 0.010,
        onset_source: str = "photodiode",
        clock: Callable[[], float] = time.monotonic,
        start_s: float | None = None,
        count_seed: int | None = None,
    ):
        self.subject = _load_subject(subject, subject_params)
        if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
            rng = np.random.default_rng(int(rng))
        if not isinstance(rng, np.random.Generator):
            raise ConfigError("rng", f"{type(rng).__name__} is not a seed", "a numpy Generator or an int seed")
        for fname, v, lo in (("latency_s", latency_s, 0.0), ("display_lag_s", display_lag_s, 0.0),
                             ("data_lag_s", data_lag_s, 0.0)):
            if not (math.isfinite(v) and v >= lo):
                raise ConfigError(fname, f"{v!r} is not a non-negative number of seconds")
        for fname, v in (("response_s", response_s), ("block_s", block_s)):
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(fname, f"{v!r} is not a positive number of seconds")
        if onset_source not in ("photodiode", "ttl", "flip"):
            raise ConfigError("onset_source", f"{onset_source!r} is unknown", ONSET_SOURCES[:3])
        self.n_units = int(getattr(self.subject, "n_units", 1))
        base = np.broadcast_to(np.asarray(baseline_hz, dtype=np.float64), (self.n_units,)).copy()
        if not np.all(np.isfinite(base)) or np.any(base < 0):
            raise ConfigError("baseline_hz", f"{baseline_hz!r} is not a non-negative rate", "spikes/s >= 0")
        self.baseline_hz = base
        self.latency_s, self.response_s = float(latency_s), float(response_s)
        self.display_lag_s, self.data_lag_s, self.block_s = float(display_lag_s), float(data_lag_s), float(block_s)
        self.onset_source = onset_source
        self.clock = clock
        if count_seed is not None and (isinstance(count_seed, bool) or not isinstance(count_seed, (int, np.integer))):
            raise ConfigError("count_seed", f"{count_seed!r} is not an integer seed", "the rig's noise seed or None")
        self.count_seed = None if count_seed is None else int(count_seed)
        # one draw from the session generator seeds every block; the session rng advances exactly once
        self._entropy = int(rng.integers(0, 2**63))
        t0 = clock() - self.data_lag_s if start_s is None else float(start_s)
        self._k = math.floor(t0 / self.block_s)  # next block to simulate
        self._presentations: list[_Presentation] = []
        self._images: dict[str, tuple[np.ndarray, tuple[int, int, int] | None]] = {}
        self._onsets: list[Onset] = []
        self._seen: set[str] = set()
        self._units = [f"sim:{u}" for u in range(self.n_units)]
        self.rejected = RejectionLog(log, "sim", per_shape=3)

    # ---- presentations -----------------------------------------------------------------------------
    def set_image(self, presentation_id: str, image: np.ndarray, key: tuple[int, int, int] | None = None) -> None:
        """Tell the simulated neuron which image a presentation will show (before its marker arrives)."""
        self._images[presentation_id] = (image, key)

    def add_marker(self, marker: Marker) -> None:
        image, key = self._images.pop(marker.presentation_id, (None, None))
        if image is None:
            self._reject(marker.presentation_id, "no image was set for this presentation")
            return
        self.present(marker.presentation_id, image, marker.flip_s, key=key)

    def present(
        self, presentation_id: str, image: np.ndarray, flip_s: float, key: tuple[int, int, int] | None = None
    ) -> None:
        """The display flipped ``image`` at ``flip_s`` (on this source's clock).

        ``key`` = (generation, order, attempt) draws this presentation's counts from its own seeded stream
        (needs ``count_seed``), the same draw the in-silico rig makes.
        """
        pid = presentation_id
        if pid in self._seen:
            self.rejected(f"duplicate presentation {pid} ignored", "presentation")
            return
        self._seen.add(pid)
        if not isinstance(flip_s, (int, float)) or not math.isfinite(flip_s):
            self._reject(pid, f"flip time {flip_s!r} is not finite")
            return
        try:
            img = np.asarray(image, dtype=np.float32)
        except (TypeError, ValueError) as e:
            self._reject(pid, f"image is not an array ({e})")
            return
        if img.ndim != 3 or img.shape[-1] != 3:
            self._reject(pid, f"image shape {img.shape} is not (H, W, 3)")
            return
        if not np.all(np.isfinite(img)) or img.min() < 0 or img.max() > 1:
            self._reject(pid, "image values are not finite numbers in [0, 1]")
            return
        try:
            rate = np.asarray(self.subject.rate(img[None]), dtype=np.float64)
        except Exception as e:  # a broken subject must not stop the bridge
            self._reject(pid, f"subject.rate failed: {type(e).__name__}: {e}")
            return
        if rate.shape != (1, self.n_units):
            self._reject(pid, f"subject rate has shape {rate.shape}, expected (1, {self.n_units})")
            return
        rate = rate[0]
        if not np.all(np.isfinite(rate)):
            self._reject(pid, f"subject rate {rate.tolist()} is not finite")
            return
        if np.any(rate < 0):
            self._reject(pid, f"subject rate {rate.tolist()} is negative")
            return
        onset = float(flip_s) + self.display_lag_s
        start = onset + self.latency_s
        if start < self.watermark():
            self._reject(
                pid, f"response start {start:.4f} s was already simulated (watermark {self.watermark():.4f} s)",
                onset=onset,
            )
            return
        p = _Presentation(pid, onset, start, start + self.response_s, rate)
        if key is not None and self.count_seed is not None:
            try:
                g, o, a = (int(x) for x in key)
            except (TypeError, ValueError):
                self._reject(pid, f"key {key!r} is not (generation, order, attempt)")
                return
            rng = presentation_rng(self.count_seed, g, o, a)
            n = presentation_counts(rate, self.response_s, rng)  # first draw: the in-silico count
            span = self.response_s - _GUARD_S
            p.spikes = [np.sort(start + rng.random(int(k)) * span) for k in n]
        elif key is not None:
            self.rejected(f"presentation {pid}: key given but no count_seed; counts are not keyed", "key")
        self._presentations.append(p)
        self._onsets.append(Onset(pid, onset, self.onset_source, True, self._flag()))

    def _flag(self) -> tuple[str, ...]:
        if self.onset_source != "flip":
            return ()
        return ("onset is the display flip time: the simulated rig gives no photodiode or TTL",)

    def _reject(self, pid: str, reason: str, onset: float | None = None) -> None:
        self.rejected(f"presentation {pid}: {reason}", "presentation")
        self._onsets.append(Onset(pid, onset, self.onset_source if onset is not None else "none", False, (reason,)))

    # ---- spikes ------------------------------------------------------------------------------------
    def _block(self, k: int) -> list[SpikeEvent]:
        t0, t1 = k * self.block_s, (k + 1) * self.block_s
        rng = np.random.default_rng([self._entropy, k + _BLOCK_KEY_OFFSET])
        def lo(p):  # a keyed period also keeps other spikes out of the guard just before it
            return p.start_s - _GUARD_S if p.spikes is not None else p.start_s

        active = [p for p in self._presentations if lo(p) < t1 and p.end_s > t0]
        cuts = sorted({t0, t1, *(x for p in active for x in (lo(p), p.end_s) if t0 < x < t1)})
        times: list[np.ndarray] = []
        units: list[np.ndarray] = []
        for a, c in zip(cuts[:-1], cuts[1:]):
            mid = 0.5 * (a + c)
            inside = [p for p in active if lo(p) <= mid < p.end_s]
            owner = max(inside, key=lambda p: p.onset_s) if inside else None
            if owner is not None and owner.spikes is not None:
                for u, s in enumerate(owner.spikes):
                    s = s[(s >= a) & (s < c)]
                    if s.size:
                        times.append(s)
                        units.append(np.full(s.size, u))
                continue
            rate = owner.rate if owner is not None else self.baseline_hz
            n = rng.poisson(rate * (c - a))
            for u in np.flatnonzero(n):
                times.append(a + rng.random(n[u]) * (c - a))
                units.append(np.full(n[u], u))
        if not times:
            return []
        t = np.concatenate(times)
        u = np.concatenate(units)
        order = np.argsort(t, kind="stable")
        return [SpikeEvent(self._units[int(ui)], float(ti)) for ti, ui in zip(t[order], u[order])]

    def advance_to(self, rig_s: float) -> list[SpikeEvent]:
        """Simulate every whole block that ends at or before ``rig_s``; return their spikes."""
        out: list[SpikeEvent] = []
        while (self._k + 1) * self.block_s <= rig_s:
            out.extend(self._block(self._k))
            self._k += 1
        wm = self.watermark()
        self._presentations = [p for p in self._presentations if p.end_s > wm]
        return out

    def poll(self, timeout_s: float = 0.0) -> list[SpikeEvent]:
        k = self._k
        out = self.advance_to(self.clock() - self.data_lag_s)
        if self._k == k and timeout_s > 0:
            time.sleep(min(timeout_s, self.block_s))
            out = self.advance_to(self.clock() - self.data_lag_s)
        return out

    def poll_onsets(self) -> list[Onset]:
        out, self._onsets = self._onsets, []
        return out

    def watermark(self) -> float:
        return self._k * self.block_s

    def units(self) -> list[str]:
        return list(self._units)
