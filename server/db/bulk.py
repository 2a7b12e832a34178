"""Bulk writes: COPY -> merge -> sort the leftovers (timings and responses), and the fast path for spike
counts: validated response batches packed into PostgreSQL's binary COPY format.

Packing rows with numpy instead of psycopg's per-element array dumper is what lets the batched write path
store thousands of 96-unit presentations per second (bench/storage.py): every row has the same layout (the
session's unit count), so the whole stream is a few structured-array assignments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.db.records import ResponseRecord


def ensure_temp_table(raw: Any, definition: str) -> None:
    """A session-local staging table, created once per pooled connection and emptied at every commit
    (cheaper than creating and dropping one per batch, and no catalog churn over a long session)."""
    name = definition.split(" ", 1)[0]
    if raw.execute("SELECT to_regclass(%s)", (f"pg_temp.{name}",)).fetchone()[0] is None:
        raw.execute(f"CREATE TEMP TABLE {definition} ON COMMIT DELETE ROWS")


@dataclass
class Merged:
    """What a bulk write did: rows written, identical repeats, repeats that differ, ids of nothing known."""

    written: int = 0
    duplicates: int = 0
    conflicts: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)


def copy_and_merge(
    raw: Any, *, staging: str, copy: str, fill: Callable[[Any], None], merge: str, leftovers: str,
    params: Mapping[str, Any], n_rows: int,
) -> Merged:
    """The bulk write both batched paths use: COPY the rows into a staging table, merge them with ONE
    statement (``merge`` returns the ids it wrote; first write wins), then sort the rows it left:
    ``leftovers`` (given ``%(written)s``) returns (id, unknown, identical) for each of them."""
    ensure_temp_table(raw, staging)
    out = Merged()
    with raw.cursor() as cur:
        with cur.copy(copy) as cp:
            fill(cp)
        cur.execute(merge, params)
        written = [r[0] for r in cur.fetchall()]
        out.written = len(written)
        if out.written != n_rows:
            cur.execute(leftovers, {**params, "written": written})
            for pid, unknown, same in cur.fetchall():
                if unknown:
                    out.unknown.append(pid)
                elif same:
                    out.duplicates += 1
                else:
                    out.conflicts.append(pid)
    return out


def first_per_id(rows: list[tuple]) -> tuple[list[tuple], int, list[int]]:
    """Keep the first row per presentation id within one batch. Returns (rows, identical repeats,
    ids whose repeat differed)."""
    seen: dict[int, tuple] = {}
    dupes, conflicts = 0, []
    for r in rows:
        first = seen.get(r[0])
        if first is None:
            seen[r[0]] = r
        elif first == r:
            dupes += 1
        else:
            conflicts.append(r[0])
    return list(seen.values()), dupes, conflicts


class ResponseBatch:
    """Validated responses of one batch as arrays (one row per presentation, counts in unit order), and
    their binary COPY stream."""

    INT4_OID = 23
    SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
    TRAILER = b"\xff\xff"

    def __init__(self, pid, counts, base, has_base, window, base_window):
        self.pid, self.counts, self.base, self.has_base = pid, counts, base, has_base
        self.window, self.base_window = window, base_window

    def __len__(self) -> int:
        return len(self.pid)

    @classmethod
    def build(cls, responses: Sequence[ResponseRecord], n_units: int) -> tuple[ResponseBatch, list[tuple[int, str]]]:
        """Validate and pack; rows that fail come back as (presentation id, reason)."""
        fast = cls._build_uniform(responses, n_units)
        if fast is not None:
            return fast, []
        n = len(responses)
        pid = np.empty(n, dtype=np.int64)
        counts = np.zeros((n, n_units), dtype=np.int64)
        base = np.zeros((n, n_units), dtype=np.int64)
        has_base = np.zeros(n, dtype=bool)
        window = np.zeros((n, 2))
        base_window = np.zeros((n, 2))
        ok = np.ones(n, dtype=bool)
        bad: list[tuple[int, str]] = []
        for i, r in enumerate(responses):
            pid[i] = r.presentation_id
            try:
                counts[i] = count_vector(r.counts, n_units)
                window[i] = (r.window_start_ms, r.window_end_ms)
                if not window[i, 1] > window[i, 0]:
                    raise ValueError("window_end_ms must be > window_start_ms")
                if r.baseline_counts is not None:
                    base[i] = count_vector(r.baseline_counts, n_units)
                    if r.baseline_start_ms is None or r.baseline_end_ms is None:
                        raise ValueError("baseline_counts needs baseline_start_ms and baseline_end_ms")
                    base_window[i] = (r.baseline_start_ms, r.baseline_end_ms)
                    if not base_window[i, 1] > base_window[i, 0]:
                        raise ValueError("baseline_end_ms must be > baseline_start_ms")
                    has_base[i] = True
                elif r.baseline_start_ms is not None or r.baseline_end_ms is not None:
                    raise ValueError("a baseline window needs baseline_counts")
            except (ValueError, TypeError) as exc:
                ok[i] = False
                bad.append((int(r.presentation_id), str(exc)))
        batch = cls(pid[ok], counts[ok], base[ok], has_base[ok], window[ok], base_window[ok])
        return batch, bad

    @classmethod
    def _build_uniform(cls, responses: Sequence[ResponseRecord], n_units: int) -> ResponseBatch | None:
        """The common case in one go: every row valid and alike (integer counts, baseline on all or none).
        None sends the batch through the row-by-row path, which names what is wrong with each row."""
        n = len(responses)
        if n == 0:
            return None
        try:
            counts = np.stack([np.asarray(r.counts) for r in responses])
            with_base = responses[0].baseline_counts is not None
            if with_base:
                base = np.stack([np.asarray(r.baseline_counts) for r in responses])
                base_window = np.array([(r.baseline_start_ms, r.baseline_end_ms) for r in responses], dtype=float)
            else:
                if any(
                    r.baseline_counts is not None or r.baseline_start_ms is not None or r.baseline_end_ms is not None
                    for r in responses
                ):
                    return None
                base, base_window = np.zeros((n, n_units), dtype=np.int64), np.zeros((n, 2))
            window = np.array([(r.window_start_ms, r.window_end_ms) for r in responses], dtype=float)
            pid = np.array([r.presentation_id for r in responses], dtype=np.int64)
        except (ValueError, TypeError):
            return None
        for a in (counts, base):
            if a.shape != (n, n_units) or a.dtype.kind not in "iu" or (a.size and (a.min() < 0 or a.max() > 2**31 - 1)):
                return None
        if not (
            np.all(window[:, 1] > window[:, 0]) and (not with_base or np.all(base_window[:, 1] > base_window[:, 0]))
        ):
            return None
        return cls(pid, counts, base, np.full(n, with_base), window, base_window)

    def _same(self, i: int, j: int) -> bool:
        return (
            np.array_equal(self.counts[i], self.counts[j])
            and self.has_base[i] == self.has_base[j]
            and (not self.has_base[i] or np.array_equal(self.base[i], self.base[j]))
            and np.array_equal(self.window[i], self.window[j])
            and np.array_equal(self.base_window[i], self.base_window[j])
        )

    def drop_repeats(self) -> tuple[int, list[int]]:
        """Keep the first row per presentation; return (identical repeats, ids whose repeat differed)."""
        _, first = np.unique(self.pid, return_index=True)
        if len(first) == len(self.pid):
            return 0, []
        keep = np.zeros(len(self.pid), dtype=bool)
        keep[first] = True
        index_of = {int(self.pid[i]): int(i) for i in first}
        dupes, conflicts = 0, []
        for j in np.flatnonzero(~keep):
            if self._same(index_of[int(self.pid[j])], j):
                dupes += 1
            else:
                conflicts.append(int(self.pid[j]))
        order = np.sort(first)
        for name in ("pid", "counts", "base", "has_base", "window", "base_window"):
            setattr(self, name, getattr(self, name)[order])
        return dupes, conflicts

    def copy_binary(self) -> bytes:
        """The COPY ... (FORMAT BINARY) stream: signature, one tuple per row, trailer."""
        parts = [self.SIGNATURE]
        for with_base in (False, True):
            sel = self.has_base == with_base
            if sel.any():
                parts.append(self._tuples(sel, with_base))
        parts.append(self.TRAILER)
        return b"".join(parts)

    def _tuples(self, sel: np.ndarray, with_base: bool) -> bytes:
        n, u = int(sel.sum()), self.counts.shape[1]
        arr_len = 20 + 8 * u  # ndim, has_null, element oid, dim, lower bound, then (length, value) pairs
        array = [
            ("len", ">i4"),
            ("ndim", ">i4"),
            ("hasnull", ">i4"),
            ("oid", ">i4"),
            ("dim", ">i4"),
            ("lbound", ">i4"),
            ("items", ">i4", (u, 2)),
        ]
        fields = [("nfields", ">i2"), ("pid_len", ">i4"), ("pid", ">i8"), ("counts", array)]
        fields += [("base", array)] if with_base else [("base_null", ">i4")]
        fields += [("ws_len", ">i4"), ("ws", ">f8"), ("we_len", ">i4"), ("we", ">f8")]
        if with_base:
            fields += [("bs_len", ">i4"), ("bs", ">f8"), ("be_len", ">i4"), ("be", ">f8")]
        else:
            fields += [("bs_null", ">i4"), ("be_null", ">i4")]
        rec = np.zeros(n, dtype=np.dtype(fields))
        rec["nfields"] = 7
        rec["pid_len"] = 8
        rec["pid"] = self.pid[sel]
        for name, values in (("counts", self.counts[sel]), ("base", self.base[sel])):
            if name == "base" and not with_base:
                rec["base_null"] = -1
                continue
            a = rec[name]
            a["len"], a["ndim"], a["hasnull"], a["oid"], a["dim"], a["lbound"] = arr_len, 1, 0, self.INT4_OID, u, 1
            items = a["items"]
            items[..., 0] = 4
            items[..., 1] = values
            rec[name] = a
        rec["ws_len"] = rec["we_len"] = 8
        rec["ws"], rec["we"] = self.window[sel, 0], self.window[sel, 1]
        if with_base:
            rec["bs_len"] = rec["be_len"] = 8
            rec["bs"], rec["be"] = self.base_window[sel, 0], self.base_window[sel, 1]
        else:
            rec["bs_null"] = rec["be_null"] = -1
        return rec.tobytes()


def count_vector(values: Sequence[int] | np.ndarray, n_units: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError("spike counts must be a 1-D sequence")
    if len(arr) != n_units:
        raise ValueError(f"{len(arr)} counts for {n_units} units")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind not in "f" or not np.all(np.isfinite(arr)) or not np.all(arr == np.rint(arr)):
            raise ValueError("spike counts must be integers")
    if n_units and (arr.min() < 0 or arr.max() > 2**31 - 1):
        raise ValueError("spike counts must be integers in [0, 2**31)")
    return arr
