"""Recording bridge: spike counts per presentation from a simulated neuron, LSL or Open Ephys.

Data flows one way: a source (``adapters``) yields spikes, onsets and a watermark on the rig clock;
``WindowCounter`` counts each presentation's half-open response and baseline windows once the watermark
has passed them; ``app.Bridge`` sends them as numbered ``counts_batch`` messages, which the wire layer keeps
and re-sends until the server acknowledges them (one reliability mechanism for the whole system).
"""

from .adapters import ADAPTERS, make_adapter
from .alignment import ClockFit, Edge, OnsetAligner, match_photodiode, ttl_code
from .base import ONSET_SOURCES, Marker, Onset, SpikeEvent, SpikeSource
from .pipeline import CountingPipeline
from .windows import PresentationCounts, WindowCounter

__all__ = [
    "ADAPTERS", "make_adapter", "ClockFit", "Edge", "OnsetAligner", "match_photodiode", "ttl_code",
    "ONSET_SOURCES", "Marker", "Onset", "SpikeEvent", "SpikeSource", "CountingPipeline",
    "PresentationCounts", "WindowCounter",
]
