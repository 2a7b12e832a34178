"""Registry of recording sources: config name -> class. Adapters never import each other.

    src = make_adapter("openephys", endpoint="tcp://127.0.0.1:5557", sample_rate=30000.0)
"""

from __future__ import annotations

import inspect

from server.engine.base import ConfigError

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
    cls = ADAPTERS.get(name)
    if cls is None:
        raise ConfigError("adapter", f"unknown recording source {name!r}", sorted(ADAPTERS))
    sig = inspect.signature(cls.__init__)
    allowed = [p for p in sig.parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"adapter.{name}", f"unknown parameter(s) {', '.join(unknown)}", allowed)
    try:
        sig.bind(None, **params)
    except TypeError as e:
        raise ConfigError(f"adapter.{name}", str(e), allowed) from None
    return cls(**params)


__all__ = ["ADAPTERS", "make_adapter", "LslSource", "NwbReplaySource", "OpenEphysSource", "SimSource"]
