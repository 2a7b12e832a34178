"""Keep Lab Streaming Layer on loopback: one helper for the display client and the recording bridge.

liblsl reads the file named by ``LSLAPICFG`` once, at its first use, so call :func:`use_loopback_lsl`
before creating any pylsl object (importing pylsl earlier is harmless). Example::

    from wire.lsl_config import use_loopback_lsl
    use_loopback_lsl()            # sets os.environ["LSLAPICFG"] unless the operator set it already
    import pylsl
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo("snslab-markers", "Markers", 1, 0, "string"))
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

LOOPBACK_CONFIG = """\
[ports]
IPv6 = disable

[multicast]
ResolveScope = machine
MachineAddresses = {127.0.0.1}
AddressesOverride = {127.0.0.1}

[lab]
KnownPeers = {127.0.0.1}
"""


def write_loopback_config(directory: str | os.PathLike | None = None) -> Path:
    """Write the loopback config (atomically) and return its path."""
    d = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"snslab-lsl-loopback-{os.getuid() if hasattr(os, 'getuid') else 0}.cfg"
    if not path.exists() or path.read_text() != LOOPBACK_CONFIG:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".lslcfg-")
        with os.fdopen(fd, "w") as f:
            f.write(LOOPBACK_CONFIG)
        os.replace(tmp, path)
    return path


def use_loopback_lsl(directory: str | os.PathLike | None = None, *, override: bool = False) -> Path:
    """Point ``LSLAPICFG`` at the loopback config and return the file in use. An ``LSLAPICFG`` that is
    already set (the operator's own config) wins unless ``override``."""
    current = os.environ.get("LSLAPICFG")
    if current and not override:
        return Path(current)
    path = write_loopback_config(directory)
    os.environ["LSLAPICFG"] = str(path)
    return path
