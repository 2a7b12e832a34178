"""Unit keys on the wire: one reversible rule for the names real rigs use.

Acquisition systems name units freely: Open Ephys electrodes are ``"Electrode 1"``, LSL channel labels can
hold spaces, slashes or non-ASCII letters. On the wire a unit key is the name *percent-encoded*: every byte
of its UTF-8 form outside ``A-Z a-z 0-9 _ . : / -`` becomes ``%XX`` (upper-case hex), so ``%`` itself is
``%25``. Keys are then plain ``[A-Za-z0-9_.:/%-]`` strings (at most 256 characters) and ``unit_name`` gives
the name back exactly::

    >>> unit_key("Electrode 1:0")
    'Electrode%201:0'
    >>> unit_name("Electrode%201:0")
    'Electrode 1:0'
    >>> unit_key("sim:0")          # names that need no escaping are their own key
    'sim:0'

The server encodes the session's unit names the same way, so operator, bridge and database agree.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:/-")
UNIT_KEY_PATTERN = r"^[A-Za-z0-9_.:/%-]{1,256}$"
_KEY = re.compile(UNIT_KEY_PATTERN)


def unit_key(name: str) -> str:
    """The wire key of a unit name (see the module docstring)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"unit name {name!r} is not a non-empty string")
    return "".join(chr(b) if b in SAFE else f"%{b:02X}" for b in name.encode("utf-8"))


def unit_name(key: str) -> str:
    """The unit name a wire key stands for (inverse of ``unit_key``)."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"unit key {key!r} is not [A-Za-z0-9_.:/%-]{{1,256}}")
    return unquote(key, encoding="utf-8", errors="strict")
