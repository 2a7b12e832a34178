"""Keeping LSL on loopback where the machines require it (see docs rig-integration.md).

liblsl reads the file named by ``LSLAPICFG`` once, the first time any LSL function runs, so this must be
called before pylsl does anything (importing pylsl is harmless, using it is not). A variable the lab has
already set is respected.
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


def ensure_loopback_config(path: str | os.PathLike | None = None) -> str:
    """Point ``LSLAPICFG`` at a loopback-only config unless it is already set; return the path in use."""
    current = os.environ.get("LSLAPICFG")
    if current:
        return current
    p = Path(path) if path is not None else Path(tempfile.gettempdir()) / f"snslab-lsl-loopback-{os.getuid()}.cfg"
    if not p.exists() or p.read_text() != LOOPBACK_CONFIG:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(LOOPBACK_CONFIG)
        tmp.replace(p)
    os.environ["LSLAPICFG"] = str(p)
    return str(p)
