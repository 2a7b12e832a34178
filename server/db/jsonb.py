"""JSON for the JSONB columns: numpy values become numbers/lists, non-finite numbers are refused by key."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (bytes, bytearray)):
        raise TypeError("bytes cannot be stored in a JSON column; use a BYTEA column")
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def json_dumps(obj: Any) -> str:
    """JSON for JSONB columns: numpy scalars/arrays become numbers/lists; NaN and infinity are refused
    (PostgreSQL's JSON has no such values), with the offending key named."""
    try:
        return json.dumps(obj, default=_json_default, allow_nan=False)
    except ValueError:
        raise ValueError(f"non-finite number in JSON value {_find_nonfinite(obj)!r}") from None


def _find_nonfinite(obj: Any, path: str = "$") -> str:
    if isinstance(obj, float) and not math.isfinite(obj):
        return path
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _find_nonfinite(v, f"{path}.{k}")
            if found:
                return found
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _find_nonfinite(v, f"{path}[{i}]")
            if found:
                return found
    return ""
