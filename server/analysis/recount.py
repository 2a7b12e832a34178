"""Re-count a stored session's responses from its raw spike times with other windows.

    res = recount(repo, session_id, window_ms=(60, 220), baseline_ms=(-60, 0))
    res.analysis_id, res.counts[pid]          # stored as a new analysis; original rows untouched

Windows are half-open in integer nanoseconds after the rig onset, ``[start, end)``: the bridge's windows
(whose float edges sit 1 ns early so that a spike exactly on an edge up to rounding counts as on it) give
the same counts, so re-counting with the window used online reproduces the stored counts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from server.engine.base import ConfigError

Window = tuple[float, float]


def parse_window(text: str, name: str = "window") -> Window:
    """'60:220' -> (60.0, 220.0) ms; one-line ConfigError naming the option otherwise."""
    try:
        a, b = (float(v) for v in str(text).split(":"))
    except ValueError:
        raise ConfigError(name, f"{text!r} is not START:END in ms", "e.g. 60:220 or -60:0") from None
    if not (np.isfinite(a) and np.isfinite(b) and a < b):
        raise ConfigError(name, f"{text!r}: START must be before END", "e.g. 60:220")
    return a, b


def count_in(times_ns: np.ndarray, window_ms: Window) -> int:
    """Spikes with ``start <= t < end`` (t in integer ns after onset, the window in ms)."""
    lo, hi = round(window_ms[0] * 1e6), round(window_ms[1] * 1e6)
    return int(np.searchsorted(times_ns, hi, "left") - np.searchsorted(times_ns, lo, "left"))


@dataclass
class RecountResult:
    analysis_id: int
    window_ms: Window
    baseline_ms: Window | None
    counts: dict[int, list[int]] = field(default_factory=dict)
    baseline: dict[int, list[int]] = field(default_factory=dict)
    skipped: int = 0  # answered presentations without a spike train (e.g. recorded with --spike-margin off)
    same_as_online: int = 0  # presentations whose recount equals the stored counts
    compared: int = 0


def recount(repo, session_id: uuid.UUID, window_ms: Window, baseline_ms: Window | None = None,
            progress: Callable[[int, int], None] | None = None) -> RecountResult:
    from server.db.analyses import AnalysisRow, create_analysis
    from server.db.spikes import load_spike_trains

    repo.session_summary(session_id)  # SessionNotFound, one line
    trains = load_spike_trains(repo.engine, session_id)
    if not trains:
        raise ConfigError("session", f"{session_id} has no stored spike times (recorded before issue 14, or "
                          "with --spike-margin off)")
    margin = (max(t.start_ms for t in trains.values()), min(t.end_ms for t in trains.values()))
    for name, w in (("window", window_ms), ("baseline", baseline_ms)):
        if w is not None and (w[0] < margin[0] or w[1] > margin[1]):
            raise ConfigError(name, f"{w[0]:g}:{w[1]:g} ms reaches beyond the stored spike times",
                              f"within {margin[0]:g}:{margin[1]:g} ms")
    h = repo.load_history(session_id)
    stored = {int(h.presentation_id[i]): i for i in range(len(h)) if h.counts[i].min() >= 0}
    out = RecountResult(0, window_ms, baseline_ms)
    rows = []
    total = len(trains)
    for k, (pid, tr) in enumerate(sorted(trains.items())):
        per_unit = tr.per_unit()
        c = [count_in(t, window_ms) for t in per_unit]
        b = [count_in(t, baseline_ms) for t in per_unit] if baseline_ms is not None else None
        out.counts[pid] = c
        if b is not None:
            out.baseline[pid] = b
        i = stored.get(pid)
        if i is not None and tuple(h.window_ms[i]) == tuple(window_ms):
            out.compared += 1
            out.same_as_online += int(list(h.counts[i]) == c)
        rows.append(AnalysisRow(pid, counts=c, baseline_counts=b))
        if progress is not None and (k % 256 == 0 or k == total - 1):
            progress(k + 1, total)
    out.skipped = sum(1 for pid in stored if pid not in trains)
    summary = {"presentations": len(rows), "without_spike_times": out.skipped,
               "mean_count_per_unit": np.mean([r.counts for r in rows], axis=0).round(4).tolist() if rows else [],
               "compared_with_online": out.compared, "same_as_online": out.same_as_online}
    params = {"window_ms": list(window_ms), "baseline_ms": None if baseline_ms is None else list(baseline_ms)}
    out.analysis_id = create_analysis(repo.engine, session_id, "recount", params, summary, rows)
    return out
