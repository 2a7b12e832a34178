"""What every recording source provides, and the plain records that flow out of it.

A source (simulated neuron, LSL, Open Ephys, ...) turns rig data into three things:

- ``SpikeEvent``: one spike of one unit at a rig time;
- ``Onset``: when a presentation's image appeared, on the rig clock, and how we know (photodiode edge,
  TTL word, or, flagged, the display's flip time);
- a *watermark*: the rig time up to which all data has arrived. Counts are emitted only once the
  watermark has passed a window's end, never on wall-clock time.

Times are seconds on the rig clock (``rig_s``). Unit keys are opaque strings, ``"<channel>:<unit>"`` for
rigs (``"Electrode 1:2"``, ``"17:1"``) and ``"sim:<index>"`` for the simulated neuron.
"""

from __future__ import annotations

import math

from abc import ABC, abstractmethod
from dataclasses import dataclass

ONSET_SOURCES = ("photodiode", "ttl", "flip", "none")
"""Where an onset came from; "none" means no onset could be determined (the presentation is invalid)."""


@dataclass(frozen=True, slots=True)
class SpikeEvent:
    """One spike: unit key and rig time in seconds."""

    unit: str
    rig_s: float


@dataclass(frozen=True, slots=True)
class Marker:
    """The display's report that a presentation's first frame was flipped.

    ``flip_s`` is on the display clock (for LSL: already mapped to this machine's clock). ``code`` is the
    TTL word the display sent with this flip (see ``alignment.ttl_code``), if any.
    """

    presentation_id: str
    flip_s: float
    code: int | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    """Rig data that cannot be trusted between ``start_s`` and ``end_s`` (closed; equal for one late
    event): a gap in the stream, dropped messages, a spike that arrived after the watermark had passed it.
    Every presentation whose window touches a fault is sent ``valid=False`` with ``reason``."""

    start_s: float
    end_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class Onset:
    """When a presentation started on the rig clock. ``rig_s`` is None only for an invalid onset."""

    presentation_id: str
    rig_s: float | None
    source: str
    valid: bool = True
    qc_reasons: tuple[str, ...] = ()

    def __post_init__(self):
        if self.source not in ONSET_SOURCES:
            raise ValueError(f"onset source {self.source!r} is not one of {', '.join(ONSET_SOURCES)}")
        if self.rig_s is None or not math.isfinite(self.rig_s):
            if self.valid:
                raise ValueError(f"presentation {self.presentation_id}: a valid onset needs a finite rig time")


class SpikeSource(ABC):
    """A recording source: spikes, presentation onsets and a watermark, all on the rig clock.

    Typical loop (see ``pipeline.CountingPipeline``)::

        src = make_adapter("openephys", endpoint="tcp://127.0.0.1:5557", sample_rate=30000.0)
        src.add_marker(Marker("p1", flip_s=12.345, code=1))   # from the display, via the wire
        spikes = src.poll(timeout_s=0.05)                     # rig data that arrived
        onsets = src.poll_onsets()                            # onsets resolved so far
        wm = src.watermark()                                  # all rig data up to wm has arrived
    """

    name: str = "?"

    @abstractmethod
    def poll(self, timeout_s: float = 0.0) -> list[SpikeEvent]:
        """Read what the rig has sent (waiting at most ``timeout_s``); return the spikes in it."""

    @abstractmethod
    def poll_onsets(self) -> list[Onset]:
        """Onsets resolved since the last call (each presentation at most once)."""

    @abstractmethod
    def watermark(self) -> float:
        """Rig time up to which all spikes and onset edges have arrived; -inf before any data."""

    def add_marker(self, marker: Marker) -> None:
        """Accept the display's flip report for a presentation (sources with their own marker stream
        also read it themselves)."""
        raise NotImplementedError(f"source {self.name!r} does not take display markers")

    def units(self) -> list[str]:
        """Unit keys known so far (configured or seen), sorted."""
        return []

    def poll_faults(self) -> list[Fault]:
        """Stretches of rig time found unreliable since the last call (gaps, drops, late data)."""
        return []

    def close(self) -> None:
        """Release sockets and streams. Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
