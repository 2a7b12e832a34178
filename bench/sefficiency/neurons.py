"""The four model units, expressed in code space, and the low-dimensional sweeps behind their exact fronts.

Each unit sees a code z only through C = Q z / R (Q: k orthonormal rows, the Gabor filters in DCT
coefficients; C lies in the unit ball). Its drive u(C) is normalised so that its most exciting image (MEI)
gives u = 1, and the rate is Naka-Rushton: lambda = 2 + 100 u^2 / (u^2 + c50^2) Hz (n = 2).

For a reference z_ref = R (Q^T c_r + beta e) (e orthogonal to the span), the code with span part C that
stretches farthest has its orthogonal part pointing away from z_ref at full remaining radius:
    d_max(C)^2 / R^2 = ||C - c_r||^2 + (beta + sqrt(1 - ||C||^2))^2,
and the one that stretches least keeps as much of z_ref's orthogonal part as fits:
    d_min(C)^2 / R^2 = ||C - c_r||^2 + max(0, beta - sqrt(1 - ||C||^2))^2.
So exact fronts need only a sweep over C, which each unit reduces further (``sweep``) by its symmetries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .zspace import Space, symmetric_orthonormal

BASE_RATE = 2.0
GAIN = 100.0
C50 = 0.5


def naka_rushton(u: np.ndarray) -> np.ndarray:
    u = np.asarray(u, dtype=np.float64)
    u2 = u * u
    return BASE_RATE + GAIN * u2 / (u2 + C50**2)


def stretch_max(dist2_span: np.ndarray, norm2: np.ndarray, beta: float) -> np.ndarray:
    """Largest ||z - z_ref|| / R over codes whose span part has the given distance and norm (squared)."""
    rest = np.sqrt(np.clip(1.0 - norm2, 0.0, None))
    return np.sqrt(dist2_span + (beta + rest) ** 2)


def stretch_min(dist2_span: np.ndarray, norm2: np.ndarray, beta: float) -> np.ndarray:
    """Smallest ||z - z_ref|| / R over codes whose span part has the given distance and norm (squared)."""
    rest = np.sqrt(np.clip(1.0 - norm2, 0.0, None))
    return np.sqrt(dist2_span + np.clip(beta - rest, 0.0, None) ** 2)


@dataclass
class Sweep:
    """Achievable (stretch, drive) combinations: a code with stretch ``d`` (in units of R) exists for every
    drive in [u_lo, u_hi]. ``d`` is the largest stretch (invariance) or the smallest (adversarial)."""

    d: np.ndarray
    u_lo: np.ndarray
    u_hi: np.ndarray


class Unit:
    name = "?"
    k = 0

    def __init__(self, space: Space):
        self.space = space
        self.Q = self._span(space)  # (k, n) orthonormal rows
        assert self.Q.shape == (self.k, space.n)

    # -- the model ---------------------------------------------------------------------------------
    def _span(self, space: Space) -> np.ndarray:
        raise NotImplementedError

    def drive(self, C: np.ndarray) -> np.ndarray:
        """u for (B, k) normalised span coordinates."""
        raise NotImplementedError

    def coords(self, codes: np.ndarray) -> np.ndarray:
        return np.atleast_2d(codes) @ self.Q.T / self.space.radius

    def rate(self, codes: np.ndarray) -> np.ndarray:
        """Noise-free rate (spikes/s) of (B, n) codes."""
        return naka_rushton(self.drive(self.coords(codes)))

    # -- references ---------------------------------------------------------------------------------
    def mei_coords(self) -> np.ndarray:
        c = np.zeros(self.k)
        c[0] = 1.0
        return c

    def partial_coords(self, fraction: float) -> np.ndarray:
        """Span part of a non-MEI reference: the MEI direction shrunk to ``fraction`` of the radius."""
        return fraction * self.mei_coords()

    # -- exact fronts -------------------------------------------------------------------------------
    def sweep(self, c_ref: np.ndarray, beta: float, probe: str, res: int) -> Sweep:
        raise NotImplementedError


def _dense_unit(m: int) -> np.ndarray:
    """m points on [0, 1], denser towards 1 (fronts bend sharply where a code meets the ball's surface)."""
    s = np.linspace(0.0, 1.0, m)
    return np.unique(np.r_[s, 1.0 - (1.0 - s) ** 2])


def _radial_sweep(rho: np.ndarray, rho_ref: float, beta: float, probe: str):
    """Span part at norm rho, anti-aligned (invariance) or aligned (adversarial) with the reference's."""
    if probe == "invariance":
        return stretch_max((rho + rho_ref) ** 2, rho**2, beta)
    return stretch_min((rho - rho_ref) ** 2, rho**2, beta)


class ComplexCell(Unit):
    """u = (g0 . dx)^2 + (g90 . dx)^2: phase invariant, so u(z) = u(-z)."""

    name = "complex"
    k = 2

    def _span(self, space):
        return space.gabor_pair_codes()

    def drive(self, C):
        return np.sum(C**2, axis=-1)

    def sweep(self, c_ref, beta, probe, res):
        rho_ref = float(np.linalg.norm(c_ref))
        rho = np.unique(np.r_[_dense_unit(64 * res), rho_ref, rho_ref / np.hypot(rho_ref, beta)])
        d = _radial_sweep(rho, rho_ref, beta, probe)
        u = rho**2
        return Sweep(d, u, u)


class SimpleCell(Unit):
    """u = max(g0 . dx, 0)^2: half-wave rectified, the control without phase invariance."""

    name = "simple"
    k = 1

    def _span(self, space):
        return space.gabor_pair_codes()[:1]

    def drive(self, C):
        return np.clip(C[..., 0], 0.0, None) ** 2

    def sweep(self, c_ref, beta, probe, res):
        cr = float(c_ref[0])
        special = [cr, 0.0, -cr / max(np.hypot(cr, beta), 1e-12)]
        grid = _dense_unit(64 * res)
        c = np.unique(np.clip(np.r_[grid, -grid, special], -1.0, 1.0))
        fn = stretch_max if probe == "invariance" else stretch_min
        d = fn((c - cr) ** 2, c**2, beta)
        u = np.clip(c, 0.0, None) ** 2
        return Sweep(d, u, u)


class MixedUnit(Unit):
    """u = (E + alpha max(g0 . dx, 0)^2) / (1 + alpha): energy plus a rectified simple part, which breaks the
    complex cell's z -> -z symmetry."""

    name = "mixed"
    k = 2
    alpha = 1.0

    def _span(self, space):
        return space.gabor_pair_codes()

    def drive(self, C):
        return (np.sum(C**2, axis=-1) + self.alpha * np.clip(C[..., 0], 0.0, None) ** 2) / (1.0 + self.alpha)

    def partial_coords(self, fraction):
        # Between the two phases, so the reference is neither the MEI direction nor its antipode's mirror.
        return fraction * np.array([np.cos(np.pi / 4), np.sin(np.pi / 4)])

    def sweep(self, c_ref, beta, probe, res):
        nr, nt = res, 2 * res
        r = _dense_unit(nr)[:, None]
        t = np.linspace(-np.pi, np.pi, nt, endpoint=False)
        # make sure the reference direction and its antipode are on the grid
        tr = float(np.arctan2(c_ref[1], c_ref[0]))
        t = np.unique(np.r_[t, tr, np.angle(-np.exp(1j * tr)), 0.0, np.pi])[None, :]
        C = np.stack(np.broadcast_arrays(r * np.cos(t), r * np.sin(t)), axis=-1).reshape(-1, 2)
        fn = stretch_max if probe == "invariance" else stretch_min
        d = fn(np.sum((C - c_ref) ** 2, axis=1), np.sum(C**2, axis=1), beta)
        u = self.drive(C)
        return Sweep(d, u, u)


class TranslationInvariantUnit(Unit):
    """u = tau * log(mean_k exp(E_k / tau)), a soft maximum over 3x3 shifted quadrature pairs (18 filters,
    made exactly orthonormal), normalised to 1 at its MEI (all contrast in one pair)."""

    name = "transl-inv"
    k = 18
    tau = 0.1

    def _span(self, space):
        c = (space.side - 1) / 2.0
        shift = space.side / 4.0  # 16 px on the 64 px image
        rows = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                rows.append(space.gabor_pair_codes(centre=(c + dy * shift, c + dx * shift)))
        q = np.concatenate(rows)
        # centre pair first, so the MEI is c = e_0
        order = [8, 9] + [i for i in range(18) if i not in (8, 9)]
        return symmetric_orthonormal(q[order])

    @property
    def blocks(self) -> int:
        return self.k // 2

    def _raw(self, E):
        m = E.max(axis=-1, keepdims=True)
        return self.tau * (np.log(np.mean(np.exp((E - m) / self.tau), axis=-1)) + m[..., 0] / self.tau)

    @property
    def _norm(self) -> float:
        e = np.zeros(self.blocks)
        e[0] = 1.0
        return float(self._raw(e[None])[0])

    def drive(self, C):
        E = (C.reshape(*C.shape[:-1], self.blocks, 2) ** 2).sum(-1)
        return self._raw(E) / self._norm

    def sweep(self, c_ref, beta, probe, res):
        # The span part of the reference must lie in the centre pair (true for our references). For a given
        # centre-pair norm rho0 and total energy S in the other pairs, the stretch depends only on (rho0, S)
        # and every drive between "S spread evenly" (lowest) and "S in one pair" (highest) is reachable.
        assert np.allclose(c_ref[2:], 0.0), "reference must lie in the centre pair"
        rho_ref = float(np.linalg.norm(c_ref[:2]))
        rho0 = np.unique(np.r_[_dense_unit(res), rho_ref])[:, None]
        t = np.linspace(0.0, 1.0, res)[None, :]
        S = t * (1.0 - rho0**2)
        rho0, S = np.broadcast_arrays(rho0, S)
        rho0, S = rho0.ravel(), S.ravel()
        norm2 = rho0**2 + S
        if probe == "invariance":
            d = stretch_max((rho0 + rho_ref) ** 2 + S, norm2, beta)
        else:
            d = stretch_min((rho0 - rho_ref) ** 2 + S, norm2, beta)
        K = self.blocks
        even = np.zeros((len(rho0), K))
        even[:, 0] = rho0**2
        even[:, 1:] = (S / (K - 1))[:, None]
        one = np.zeros((len(rho0), K))
        one[:, 0] = rho0**2
        one[:, 1] = S
        u_lo = self._raw(even) / self._norm
        u_hi = self._raw(one) / self._norm
        return Sweep(d, u_lo, u_hi)


UNITS = {cls.name: cls for cls in (ComplexCell, TranslationInvariantUnit, MixedUnit, SimpleCell)}
