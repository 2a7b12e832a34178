"""The compact form of one presentation's spike times: microsecond ticks as 16-bit deltas (``"dus16"``).

Spike times are integer microseconds after the presentation's onset, unit after unit, each unit ascending
(``n[u]`` times for unit ``u``). Each time is stored as its step from the previous time of the same unit
(the first from ``base_us``, the window start) as a little-endian uint16; a step that is negative or
>= 0xFFFF is stored as the marker 0xFFFF, and the time itself follows, in order, as a little-endian int32
after all the uint16 words::

    blob = uint16[sum(n)] steps-or-0xFFFF  ++  int32[number of 0xFFFF words] absolute times

Any int32 sequence round-trips exactly (unsorted times just cost escapes); at 60-100 Hz per unit almost
every step fits, so a spike costs ~2 bytes instead of 4 (int32 ns). Encoding and decoding are vectorized
(O(spikes), no Python loop per spike).

    blob = encode_us(per_unit_us, base_us=-200_000)
    per_unit_us = decode_us([len(a) for a in per_unit_us], blob, base_us=-200_000)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CODEC = "dus16"
ESCAPE = 0xFFFF
INT32 = (-(2**31), 2**31 - 1)


def base_us(start_ms: float) -> int:
    """The reference of a window's first steps: its start in whole microseconds."""
    return int(round(float(start_ms) * 1000.0))


def fits(per_unit_us: Sequence[np.ndarray]) -> bool:
    """True when every time is an int32 of microseconds (windows up to +-35 minutes)."""
    lo = min((int(a.min()) for a in per_unit_us if len(a)), default=0)
    hi = max((int(a.max()) for a in per_unit_us if len(a)), default=0)
    return INT32[0] <= lo and hi <= INT32[1]


def encode_flat(flat_us: np.ndarray, n: Sequence[int], base: int) -> bytes:
    flat = np.asarray(flat_us, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    if len(flat) != int(n.sum()):
        raise ValueError(f"spike times: {len(flat)} values but the per-unit numbers add up to {int(n.sum())}")
    if len(flat) == 0:
        return b""
    if flat.min() < INT32[0] or flat.max() > INT32[1]:
        raise ValueError("spike times: microseconds out of the int32 range")
    prev = np.empty_like(flat)
    prev[0] = base
    prev[1:] = flat[:-1]
    starts = (np.cumsum(n) - n)[n > 0]
    prev[starts] = base
    step = flat - prev
    esc = (step < 0) | (step >= ESCAPE)
    words = np.where(esc, ESCAPE, step).astype("<u2")
    return words.tobytes() + flat[esc].astype("<i4").tobytes()


def encode_us(per_unit_us: Sequence[np.ndarray], base: int) -> bytes:
    """Per-unit int microsecond arrays -> blob (see the module doc)."""
    arrays = [np.asarray(a, dtype=np.int64) for a in per_unit_us]
    flat = np.concatenate(arrays) if arrays else np.empty(0, np.int64)
    return encode_flat(flat, [len(a) for a in arrays], base)


def check_length(n: Sequence[int], blob: bytes | memoryview) -> str | None:
    """None when ``blob`` has the length its uint16 words announce for ``sum(n)`` times, else why not."""
    total = int(np.sum(n)) if len(n) else 0
    if len(blob) < 2 * total:
        return f"{len(blob)} bytes but {total} times as {CODEC} need at least {2 * total}"
    escapes = int(np.count_nonzero(np.frombuffer(blob, dtype="<u2", count=total) == ESCAPE)) if total else 0
    need = 2 * total + 4 * escapes
    if len(blob) != need:
        return f"{len(blob)} bytes but {total} times with {escapes} escapes as {CODEC} need {need}"
    return None


def blob_problem(dtype: str, n: Sequence[int], blob: bytes | memoryview) -> str | None:
    """None when ``blob`` holds exactly ``sum(n)`` times in ``dtype`` (this codec, or plain ``<i4``/``<i8``)."""
    if dtype == CODEC:
        return check_length(n, blob)
    total = int(np.sum(n)) if len(n) else 0
    need = int(np.dtype(dtype).itemsize) * total
    return None if len(blob) == need else f"{len(blob)} bytes but {total} times as {dtype} need {need}"


def decode_flat(n: Sequence[int], blob: bytes | memoryview, base: int) -> np.ndarray:
    """Blob -> all units' times (int64 microseconds), unit after unit."""
    problem = check_length(n, blob)
    if problem:
        raise ValueError(f"spike times: {problem}")
    n = np.asarray(n, dtype=np.int64)
    total = int(n.sum())
    if total == 0:
        return np.empty(0, np.int64)
    words = np.frombuffer(blob, dtype="<u2", count=total).astype(np.int64)
    esc = words == ESCAPE
    absolute = np.frombuffer(blob, dtype="<i4", offset=2 * total).astype(np.int64)
    reset = esc.copy()
    reset[(np.cumsum(n) - n)[n > 0]] = True  # each unit's first time restarts from base (or an escape)
    step = np.where(reset, 0, words)
    run = np.cumsum(step)  # steps summed since the start, not counting resets
    at = np.flatnonzero(reset)
    anchor = np.where(esc[at], 0, base + words[at])
    anchor[esc[at]] = absolute
    seg = np.cumsum(reset) - 1
    return anchor[seg] + run - run[at][seg]


def decode_us(n: Sequence[int], blob: bytes | memoryview, base: int) -> list[np.ndarray]:
    flat = decode_flat(n, blob, base)
    edges = np.cumsum([0, *n])
    return [flat[a:b] for a, b in zip(edges[:-1], edges[1:])]
