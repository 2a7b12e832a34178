"""Registry of recording sources: config name -> class. Adapters never import each other.

    src = make_adapter("openephys", endpoint="tcp://127.0.0.1:5557", sample_rate=30000.0)
"""

from __future__ import annotations

from snslab_common.registry import make_from_registry

from ..base import SpikeSource
from .lsl import LslSource  # pylsl itself is imported only when an LslSource is built
from .nwb import NwbReplaySource  # pynwb itself is imported only when an NwbReplaySource is built
from .openephys import OpenEphysSource
from .sim import SimSource

ADAPTERS: dict[str, type[SpikeSource]] = {
    "sim": SimSource,
    "lsl": LslSource,
    "openephys": OpenEphysSource,
    "nwb": NwbReplaySource,
}


def make_adapter(name: str, **params) -> SpikeSource:
    """Build the source named in the config; ConfigError (one line) for unknown names or parameters."""
    return make_from_registry("adapter", ADAPTERS, name, params, what="recording source")


__all__ = ["ADAPTERS", "make_adapter", "LslSource", "NwbReplaySource", "OpenEphysSource", "SimSource"]
