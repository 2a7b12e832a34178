"""Pareto ranking for SnS: non-dominated sorting, crowding, within-front orderings and the global front.

All objectives are *maximised*. A stretched stage enters as +d and a squeezed stage as -d (the reference's
signature -1/+1 applied to S = -d). A bound violator gets ``-inf`` in every objective, so every feasible
individual dominates it. NaN is rejected, never ranked.
"""

from __future__ import annotations

import numpy as np

from .base import ConfigError

ORDERINGS = ("onevar", "random", "crowding")


def _check(objectives: np.ndarray) -> np.ndarray:
    F = np.asarray(objectives, dtype=np.float64)
    if F.ndim != 2:
        raise ValueError(f"objectives: expected a 2-D array (individuals x objectives), got shape {F.shape}")
    if np.isnan(F).any():
        raise ValueError("objectives: contain NaN (allowed: finite numbers or -inf for bound violations)")
    return F


def _first_front_2d(F: np.ndarray) -> np.ndarray:
    """Mask of the non-dominated rows of an (N, 2) array in O(N log N)."""
    n = len(F)
    order = np.lexsort((-F[:, 1], -F[:, 0]))  # f0 descending, ties by f1 descending
    f0, f1 = F[order, 0], F[order, 1]
    # Best f1 among points with strictly greater f0 (points earlier in order with a different f0).
    new_group = np.r_[True, f0[1:] != f0[:-1]]
    group_id = np.cumsum(new_group) - 1
    group_start = np.flatnonzero(new_group)
    group_max = f1[group_start]  # sorted by f1 desc within a group, so its first element is the max
    best_before = np.r_[-np.inf, np.maximum.accumulate(group_max)[:-1]]
    ok = (f1 == group_max[group_id]) & (f1 > best_before[group_id])
    # Strictly-greater test against -inf: a -inf point in the first group is still non-dominated.
    first = group_id == 0
    ok |= first & (f1 == group_max[0])
    mask = np.zeros(n, dtype=bool)
    mask[order[ok]] = True
    return mask


def _first_front_nd(F: np.ndarray, chunk: int = 512) -> np.ndarray:
    n = len(F)
    dominated = np.zeros(n, dtype=bool)
    for s in range(0, n, chunk):
        q = F[s : s + chunk, None, :]  # candidate dominators
        geq = (q >= F[None, :, :]).all(-1)
        gt = (q > F[None, :, :]).any(-1)
        dominated |= (geq & gt).any(0)
    return ~dominated


def first_front(objectives: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated individuals (maximisation)."""
    F = _check(objectives)
    if len(F) == 0:
        return np.zeros(0, dtype=bool)
    return _first_front_2d(F) if F.shape[1] == 2 else _first_front_nd(F)


def nondominated_sort(objectives: np.ndarray) -> np.ndarray:
    """Front index of every individual, 0 = best (maximisation). Equal points share a front."""
    F = _check(objectives)
    fronts = np.full(len(F), -1, dtype=np.int64)
    remaining = np.arange(len(F))
    k = 0
    while remaining.size:
        mask = first_front(F[remaining])
        fronts[remaining[mask]] = k
        remaining = remaining[~mask]
        k += 1
    return fronts


def crowding_distance(objectives: np.ndarray, fronts: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each individual within its own front (boundary points get +inf).

    Assigned per individual (the reference assigned by sorted position; see sns-method.md DEFECT).
    Objectives that are not finite within a front contribute nothing for that front.
    """
    F = _check(objectives)
    fronts = np.asarray(fronts)
    dist = np.zeros(len(F))
    for f in np.unique(fronts):
        idx = np.flatnonzero(fronts == f)
        if idx.size <= 2:
            dist[idx] = np.inf
            continue
        for j in range(F.shape[1]):
            vals = F[idx, j]
            order = np.argsort(vals, kind="stable")
            v = vals[order]
            span = v[-1] - v[0]
            dist[idx[order[0]]] = np.inf
            dist[idx[order[-1]]] = np.inf
            if not np.isfinite(span) or span <= 0:
                continue
            dist[idx[order[1:-1]]] += (v[2:] - v[:-2]) / span
    return dist


def within_front_key(
    ordering: str,
    objectives: np.ndarray,
    fronts: np.ndarray,
    squeeze_high: bool,
    high_column: int,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The reference's h_i: larger is preferred within a front.

    onevar: for the invariance probe (the unit's distance is squeezed) prefer the smallest |d_high|,
    for the adversarial probe the largest; random: U[0, 1) draws; crowding: NSGA-II crowding distance.
    """
    F = _check(objectives)
    if ordering == "onevar":
        d = np.abs(F[:, high_column])
        d = np.where(np.isfinite(d), d, np.nan)
        if squeeze_high:
            h = 1.0 / np.maximum(d, 1e-9)  # guard d_high = 0 (infinite h in the reference)
        else:
            h = d
        return np.nan_to_num(h, nan=0.0)
    if ordering == "random":
        if rng is None:
            raise ValueError("ordering 'random' needs a seeded rng")
        return rng.random(len(F))
    if ordering == "crowding":
        c = crowding_distance(F, fronts)
        finite = c[np.isfinite(c)]
        top = 2.0 * finite.max() + 1.0 if finite.size else 1.0
        return np.where(np.isfinite(c), c, top)
    raise ConfigError("ordering", f"unknown ordering {ordering!r}", ORDERINGS)


def scalar_fitness(fronts: np.ndarray, key: np.ndarray) -> np.ndarray:
    """The reference's s_i = (p_i + 1) * (max h + 1) + h_i, with p_i = F + 1 - f_i: fronts first, then h."""
    fronts = np.asarray(fronts)
    key = np.asarray(key, dtype=np.float64)
    p = fronts.max() + 1 - fronts
    return (p + 1) * (key.max() + 1.0) + key


def newest_of_global_front(objectives: np.ndarray, generation: np.ndarray, fitness: np.ndarray) -> int:
    """Index (into the stacked history) of the reported solution.

    The global non-dominated set over everything scored; among its members, the newest generation wins and,
    within it, the highest fitness. The caller returns the code that was actually scored at that index.
    """
    F = _check(objectives)
    mask = first_front(F)
    idx = np.flatnonzero(mask)
    gen = np.asarray(generation)[idx]
    newest = idx[gen == gen.max()]
    return int(newest[np.argmax(np.asarray(fitness)[newest])])
