"""Benchmark instances (unit, probe, reference), their true objectives, exact fronts and hypervolumes.

Objectives on noise-free values: f1 = ||z - z_ref|| / d_max (pixel stretch; d_max = R + ||z_ref|| is the
largest distance any code in the ball can have from the reference), f2 = min(1, |lambda - lambda_ref| /
lambda_ref). The invariance probe wants f1 up and f2 down; its hypervolume is taken against the nadir
(f1 = 0, f2 = 1). The adversarial probe wants f1 down and f2 up; its nadir is the mirror point (f1 = 1,
f2 = 0). HV* is the hypervolume of the exact front, computed from each unit's sweep (every swept point is
an achievable pair, so HV* is approached from below; ``res`` sets the sweep density).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .neurons import UNITS, Sweep, Unit, naka_rushton
from .zspace import Space

PROBES = ("invariance", "adversarial")
REFERENCE_KINDS = ("mei", "partial")
# The non-MEI reference: 60% of the radius in the filter span and 50% outside it (benchmark-protocol.md).
PARTIAL_SPAN, PARTIAL_OUTSIDE = 0.6, 0.5


def to_max(f1: np.ndarray, f2: np.ndarray, probe: str) -> np.ndarray:
    """(N, 2) coordinates in which both objectives are maximised and the nadir is the origin."""
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    if probe == "invariance":
        return np.stack([f1, 1.0 - f2], axis=-1)
    return np.stack([1.0 - f1, f2], axis=-1)


def hypervolume_max(points: np.ndarray) -> float:
    """Area dominated by (N, 2) points (both maximised) above the origin; points outside add nothing."""
    P = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    P = P[(P[:, 0] > 0) & (P[:, 1] > 0)]
    if len(P) == 0:
        return 0.0
    P = P[np.lexsort((-P[:, 1], -P[:, 0]))]  # x descending, ties: y descending
    best_y = np.maximum.accumulate(P[:, 1])
    keep = np.r_[True, best_y[1:] > best_y[:-1]]
    x, y = P[keep, 0], best_y[keep]
    # staircase: x_i times the increase of y at that step
    return float(np.sum(x * np.diff(np.r_[0.0, y])))


def nondominated_max(points: np.ndarray) -> np.ndarray:
    """Mask of non-dominated rows of (N, 2) maximised points (duplicates all kept)."""
    P = np.asarray(points, dtype=np.float64)
    order = np.lexsort((-P[:, 1], -P[:, 0]))
    y = P[order, 1]
    prev_best = np.r_[-np.inf, np.maximum.accumulate(y)[:-1]]
    x = P[order, 0]
    # sorted by x then y descending: a point survives iff its y beats every earlier (x >=) point's
    ok = y > prev_best
    # keep exact duplicates of a kept point
    dup = np.r_[False, (x[1:] == x[:-1]) & (y[1:] == y[:-1])]
    for i in np.flatnonzero(dup):
        ok[i] = ok[i - 1]
    mask = np.zeros(len(P), dtype=bool)
    mask[order[ok]] = True
    return mask


@dataclass
class ExactFront:
    probe: str
    f1: np.ndarray  # front points, sorted by f1 ascending
    f2: np.ndarray
    hv: float

    def best_stretch(self, max_f2: float) -> float:
        """Invariance: largest f1 with f2 <= max_f2 (0 if none)."""
        ok = self.f2 <= max_f2 + 1e-12
        return float(self.f1[ok].max()) if ok.any() else 0.0

    def least_stretch(self, min_f2: float) -> float:
        """Adversarial: smallest f1 with f2 >= min_f2 (inf if none)."""
        ok = self.f2 >= min_f2 - 1e-12
        return float(self.f1[ok].min()) if ok.any() else np.inf


def front_from_sweep(sweep: Sweep, lam_ref: float, d_max: float, probe: str) -> ExactFront:
    lam_lo, lam_hi = naka_rushton(sweep.u_lo), naka_rushton(sweep.u_hi)
    if probe == "invariance":
        gap = np.maximum.reduce([np.zeros_like(lam_lo), lam_lo - lam_ref, lam_ref - lam_hi])
    else:
        gap = np.maximum(np.abs(lam_lo - lam_ref), np.abs(lam_hi - lam_ref))
    f2 = np.minimum(1.0, gap / lam_ref)
    f1 = sweep.d / d_max
    P = to_max(f1, f2, probe)
    mask = nondominated_max(P)
    f1, f2 = f1[mask], f2[mask]
    order = np.argsort(f1, kind="stable")
    return ExactFront(probe, f1[order], f2[order], hypervolume_max(P[mask]))


@dataclass
class Instance:
    """One benchmark cell's geometry: unit, probe and reference, with the exact front."""

    unit: Unit
    probe: str
    reference: str
    z_ref: np.ndarray
    c_ref: np.ndarray
    beta: float
    lam_ref: float
    d_max: float
    front: ExactFront | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.unit.name}/{self.probe}/{self.reference}"

    @property
    def space(self) -> Space:
        return self.unit.space

    def objectives(self, codes: np.ndarray, rates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """True (f1, f2) of (B, n) codes (already in the ball)."""
        codes = np.atleast_2d(codes)
        f1 = np.linalg.norm(codes - self.z_ref, axis=1) / self.d_max
        lam = self.unit.rate(codes) if rates is None else rates
        f2 = np.minimum(1.0, np.abs(lam - self.lam_ref) / self.lam_ref)
        return f1, f2

    def hv(self, f1: np.ndarray, f2: np.ndarray) -> float:
        return hypervolume_max(to_max(f1, f2, self.probe))

    def hv_ratio(self, f1: np.ndarray, f2: np.ndarray) -> float:
        return self.hv(f1, f2) / self.front.hv


def make_instance(unit: Unit, probe: str, reference: str, res: int = 1500, seed: int = 20240) -> Instance:
    if probe not in PROBES:
        raise ValueError(f"probe: {probe!r} (allowed: {', '.join(PROBES)})")
    if reference not in REFERENCE_KINDS:
        raise ValueError(f"reference: {reference!r} (allowed: {', '.join(REFERENCE_KINDS)})")
    space, R = unit.space, unit.space.radius
    if reference == "mei":
        c_ref, beta = unit.mei_coords(), 0.0
        z_ref = R * (unit.Q.T @ c_ref)
    else:
        c_ref, beta = unit.partial_coords(PARTIAL_SPAN), PARTIAL_OUTSIDE
        e = space.random_orthogonal_direction(unit.Q, np.random.default_rng(seed))
        z_ref = R * (unit.Q.T @ c_ref + beta * e)
    lam_ref = float(unit.rate(z_ref[None])[0])
    d_max = R + float(np.linalg.norm(z_ref))
    inst = Instance(unit, probe, reference, z_ref, c_ref, beta, lam_ref, d_max)
    sweep = unit.sweep(c_ref, beta, probe, res)
    inst.front = front_from_sweep(sweep, lam_ref, d_max / R, probe)
    return inst


# The published cells. Invariance: non-MEI references for the complex, translation-invariant and simple
# units (with the MEI the first two have a one-point front, the contrast-inverted image); the MEI for the
# mixed unit, whose front then jumps where the half-space containing -z_ref becomes admissible (with a
# non-MEI reference its front is again nearly the single antipodal point). Adversarial: the MEI throughout.
DEFAULT_CELLS = [
    ("complex", "invariance", "partial"),
    ("transl-inv", "invariance", "partial"),
    ("mixed", "invariance", "mei"),
    ("simple", "invariance", "partial"),
] + [(u, "adversarial", "mei") for u in UNITS]


def build_instances(space: Space, cells=DEFAULT_CELLS, res: int = 1500) -> list[Instance]:
    units = {}
    out = []
    for unit_name, probe, ref in cells:
        if unit_name not in units:
            units[unit_name] = UNITS[unit_name](space)
        out.append(make_instance(units[unit_name], probe, ref, res=res))
    return out
