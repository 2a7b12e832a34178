"""How deep a JSON text nests, without parsing it: deep input is refused before ``json.loads`` recurses."""

from __future__ import annotations

import numpy as np


def json_depth(raw: bytes | memoryview) -> int:
    """Deepest nesting of ``[``/``{`` in a JSON text, counted without parsing (brackets inside strings
    count too, which can only over-estimate), so deep input is refused before ``json.loads`` recurses."""
    a = np.frombuffer(raw, dtype=np.uint8)
    step = ((a == 0x5B) | (a == 0x7B)).astype(np.int32) - ((a == 0x5D) | (a == 0x7D)).astype(np.int32)
    return int(np.cumsum(step).max(initial=0))
