"""Front confirmation: re-test the candidates that might be on the front, report the front that survives.

Found by the sample-efficiency study (docs/benchmarks.md, "What made the difference"). Under spike noise
the non-dominated set of single measurements is mostly impostors: for the invariance probe, far images
whose one count happened to match the reference; for the adversarial probe, near images whose one count
happened to be low. More presentations per candidate only make it worse (more lucky draws). Here:

- every candidate's rate is the mean of all its presentations; the reference's rate is the mean of all its
  presentations in the session; the noise is modelled as var(rate) = phi * rate, with the dispersion phi
  estimated from the reference's own repeats within each generation (Poisson counts in a window T give
  phi = 1/T; a noise-free unit gives phi = 0 and nothing is ever re-tested for noise);
- each generation, ``retests`` presentations go to members of the *optimistic* front (squeeze distance
  minus ``kappa`` standard errors, stretch distance plus) with the fewest presentations so far: exactly the
  candidates whose claim is plausible but not yet established;
- the reported front is the *conservative* one (squeeze distance plus ``kappa`` standard errors, stretch
  minus): a candidate is claimed only once its measurements support it.
"""

from __future__ import annotations

import numpy as np

from .pareto import first_front

SEED = -2  # the family of the far-reach seeds (the reference's transforms): none shares another's fate


class FrontConfirmation:
    def __init__(self, mode: str, retests: int = 10, kappa: float = 1.0, max_shows: int = 16, shrink: bool = True):
        if mode not in ("invariance", "adversarial"):
            raise ValueError(f"mode: {mode!r} (allowed: invariance, adversarial)")
        self.mode = mode
        self.retests = int(retests)
        self.kappa = float(kappa)
        self.max_shows = int(max_shows)
        self.shrink = bool(shrink)
        self.prior_mean: list[float] = []  # per candidate: its generation's rate distribution (mean, var)
        self.prior_var: list[float] = []
        self.d_low: list[float] = []  # stretch-stage distance of each candidate (deterministic)
        self.rate_sum: list[float] = []
        self.shows: list[int] = []
        self.codes: dict[int, np.ndarray] = {}
        self.family: list[int] = []  # per candidate: the far-reach band that proposed it (-1: none, SEED: a seed)
        self.ref_sum = 0.0
        self.ref_n = 0
        self._ref_var_sum = 0.0  # sum over generations of (k-1) * within-generation variance
        self._ref_var_dof = 0

    # -- data in -----------------------------------------------------------------------------------
    def add_reference(self, rates: np.ndarray) -> None:
        r = np.asarray(rates, dtype=np.float64).ravel()
        self.ref_sum += float(r.sum())
        self.ref_n += len(r)
        if len(r) > 1:
            self._ref_var_sum += float(np.var(r, ddof=1) * (len(r) - 1))
            self._ref_var_dof += len(r) - 1

    def add(self, codes: np.ndarray, d_low: np.ndarray, rates: np.ndarray, small_group: bool = False,
            family: int = -1) -> np.ndarray:
        """New candidates, each measured once; returns their ids. ``small_group``: the prior's spread also
        covers the noise of the group's own mean (a few far-reach candidates: server/engine/far_reach.py).
        ``family``: the far-reach band that proposed them (-1: the main search; ``SEED``: the reference's
        transforms shown as seeds, each a lineage of its own); a band's candidates share its fate
        (one band settles at a partial response), which verification uses (server/engine/verify.py)."""
        start = len(self.d_low)
        if not hasattr(self, "family"):  # (states stored before families existed)
            self.family = [-1] * start
        self.family.extend([int(family)] * len(d_low))
        self.d_low.extend(np.asarray(d_low, dtype=np.float64).tolist())
        self.rate_sum.extend(np.asarray(rates, dtype=np.float64).tolist())
        self.shows.extend([1] * len(d_low))
        r = np.asarray(rates, dtype=np.float64)
        # Spread of the true rates in this generation: observed variance minus the noise's share.
        true_var = max(float(np.var(r)) - self.dispersion * float(r.mean()), 1e-3 * max(float(r.mean()), 1e-6) ** 2)
        if small_group:
            true_var += self.dispersion * max(float(r.mean()), 1e-6) / len(r)
        self.prior_mean.extend([float(r.mean())] * len(r))
        self.prior_var.extend([true_var] * len(r))
        ids = np.arange(start, start + len(d_low))
        for i, c in zip(ids, codes):
            self.codes[int(i)] = np.array(c, dtype=np.float64)
        return ids

    def update(self, ids: np.ndarray, rates: np.ndarray) -> None:
        for i, r in zip(ids, np.asarray(rates, dtype=np.float64)):
            self.rate_sum[int(i)] += float(r)
            self.shows[int(i)] += 1

    def family_of(self, i: int) -> int:
        fam = getattr(self, "family", [])
        return fam[i] if i < len(fam) else -1

    # -- estimates ---------------------------------------------------------------------------------
    @property
    def reference_rate(self) -> float:
        return self.ref_sum / max(self.ref_n, 1)

    @property
    def dispersion(self) -> float:
        """phi in var(rate) = phi * rate, from the reference's repeats (Poisson: 1 / window)."""
        if self._ref_var_dof == 0 or self.reference_rate <= 0:
            return 0.0
        return (self._ref_var_sum / self._ref_var_dof) / self.reference_rate

    def _estimates(self):
        n = np.asarray(self.shows, dtype=np.float64)
        r = np.asarray(self.rate_sum) / n
        ref = self.reference_rate
        phi = self.dispersion
        ref_var = phi * ref / max(self.ref_n, 1)
        if self.shrink and phi > 0:
            # Gamma prior from the candidate's own generation (empirical Bayes), Poisson-like likelihood
            # in units of phi: posterior mean and sd of the rate. A lucky count among silent neighbours is
            # pulled back towards them; a generation of responsive images is left nearly as measured.
            m = np.maximum(np.asarray(self.prior_mean), 1e-6)
            v = np.asarray(self.prior_var)
            a, b = m * m / v, m / v
            shape = a + np.asarray(self.rate_sum) / phi
            rate = b + n / phi
            r = shape / rate
            se = np.sqrt(shape / rate**2 + ref_var)
        else:
            floor = 0.05 * ref  # a rate of zero is not a certainty after a few empty windows
            se = np.sqrt(phi * np.maximum(r, floor) / n + ref_var)
        return np.asarray(self.d_low), np.abs(r - ref), se

    def objectives(self, kind: str) -> np.ndarray:
        """(N, 2) maximised objectives with the unit distance shifted by -/+ kappa standard errors."""
        d_low, d_high, se = self._estimates()
        if kind == "optimistic":
            shift = -self.kappa * se if self.mode == "invariance" else self.kappa * se
        elif kind == "conservative":
            shift = self.kappa * se if self.mode == "invariance" else -self.kappa * se
        else:
            shift = 0.0
        d_high = np.maximum(d_high + shift, 0.0)
        if self.mode == "invariance":
            return np.stack([d_low, -d_high], axis=1)
        return np.stack([-d_low, d_high], axis=1)

    # -- decisions ---------------------------------------------------------------------------------
    def choose_retests(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, codes) to show again this generation."""
        if self.retests <= 0 or not self.d_low or self.dispersion == 0.0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0))
        ids = np.flatnonzero(first_front(self.objectives("optimistic")))
        shows = np.asarray(self.shows)[ids]
        ids = ids[(shows < self.max_shows) & np.array([int(i) in self.codes for i in ids], dtype=bool)]
        if ids.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0))
        order = np.lexsort((-np.asarray(self.d_low)[ids] * (1 if self.mode == "invariance" else -1),
                            np.asarray(self.shows)[ids]))
        ids = ids[order][: self.retests]
        codes = np.stack([self.codes[int(i)] for i in ids])
        self._prune()
        return ids, codes

    def _prune(self, keep_every: int = 4) -> None:
        """Forget codes that cannot be re-tested any more (far from the optimistic front), to bound memory."""
        if len(self.codes) < 2000:
            return
        F = self.objectives("optimistic")
        alive = set(self.front().tolist())  # the reported front (and so the selected image) is never forgotten
        remaining = np.arange(len(F))
        for _ in range(keep_every):  # the first few optimistic fronts
            if remaining.size == 0:
                break
            m = first_front(F[remaining])
            alive.update(remaining[m].tolist())
            remaining = remaining[~m]
        self.codes = {i: c for i, c in self.codes.items() if i in alive or i >= len(F) - 200}

    def front(self) -> np.ndarray:
        """Ids of the reported (conservative) front."""
        return np.flatnonzero(first_front(self.objectives("conservative")))

    def selected(self, retention_tolerance: float = 0.1, adversarial_change: float = 0.5) -> int:
        """The single image to hand back, from the conservative front.

        Invariance: the largest stretch whose response is within ``retention_tolerance`` of the reference's
        (conservatively), else the closest response. Adversarial: the smallest stretch whose response
        differs by at least ``adversarial_change`` of the reference's (conservatively), else the largest
        difference.
        """
        ids = self.front()
        F = self.objectives("conservative")[ids]
        ref = max(self.reference_rate, 1e-12)
        if self.mode == "invariance":
            ok = -F[:, 1] <= retention_tolerance * ref
            if ok.any():
                return int(ids[ok][np.argmax(F[ok, 0])])
            return int(ids[np.argmax(F[:, 1])])
        ok = F[:, 1] >= adversarial_change * ref
        if ok.any():
            return int(ids[ok][np.argmax(F[ok, 0])])
        return int(ids[np.argmax(F[:, 1])])
