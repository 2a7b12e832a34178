"""The adversarial probe's own search: the smallest change of the reference that changes the response.

Issue 12: started at the reference code with small steps, a CMA-ES ranked by Pareto fronts barely moves the
response of a saturating reference (its first steps are all on the flat top), and plain contrast reduction
toward the mean luminance halves the response at a smaller stretch. This search asks one question per
generation, "at distance rho from the reference, which directions change the response most?", and moves
rho toward the distance at which the target change (``target_change`` of the reference's rate; 0.5 halves
it) is just reached:

- every candidate lies on the shell ||z - z_ref|| = rho (code units), in a direction near the current mean
  direction m (mirrored pairs m +- sigma xi, normalised: a local search whose step is an angle);
- m starts along the contrast control (the code of the reference's contrast reduced toward its mean
  luminance, when the generator can encode images; else toward code 0), so the search is seeded with that
  control and can only report something better than it by improving on it;
- m moves to the weighted mean of the best half of the directions (ranked by the measured change of the
  response; a (mu/mu_w, lambda) evolution strategy on the sphere);
- rho is a stochastic bisection on the stretch budget: shrunk when more than ``success`` of the
  generation reached the target, grown when fewer did, by exp(``adapt`` * (share - success) / success)
  (noisy single measurements are averaged over the generation before rho moves);
- sigma (the angle of the perturbations) follows the same share: a generation with no direction better than
  the mean's neighbours narrows the search, one with many widens it (1/5th-rule-like, bounded).

The reported image is chosen by the probe's front confirmation (server.engine.confirm) and, in silico,
re-measured (server.insilico.verify_selection): the nearest image whose change of rate is established.
Everything lives in plain arrays and one numpy Generator, so ``state()``/``restore()`` are exact.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .base import ConfigError
from .optimizers import OPTIMIZERS, Optimizer, _generator_from_state, _new_generator


class ShellSearch(Optimizer):
    """Adversarial search on shells around the reference code (see the module docstring).

    ``sigma0`` is the initial angle scale of the perturbations (tan of the typical angle to the mean
    direction); ``radius`` the initial shell radius as a fraction of the contrast control's full length
    (reference -> uniform mean-luminance image). Until ``attach`` gives it the generator and reference
    image it searches from the reference toward code 0.
    """

    name = "shell"
    OPTIONS: ClassVar[dict[str, Any]] = {"target_change": 0.5, "success": 0.5, "adapt": 0.3, "radius": 0.25,
                                         "min_sigma": 0.05, "max_sigma": 2.0, "sigma_rate": 0.0, "prior": 0.0,
                                         "lr": 0.3, "pairs": False}

    def __init__(self, x0: np.ndarray, sigma0: float, popsize: int, seed: int, *, target_change: float = 0.5,
                 success: float = 0.5, adapt: float = 0.3, radius: float = 0.25, min_sigma: float = 0.05,
                 max_sigma: float = 2.0, sigma_rate: float = 0.0, prior: float = 0.0, lr: float = 0.3,
                 pairs: bool = False):
        super().__init__(x0, sigma0, popsize, seed)
        for name, v, lo, hi in (("target_change", target_change, 0.0, 1.0), ("success", success, 0.0, 1.0),
                                ("radius", radius, 0.0, 1e6), ("adapt", adapt, 0.0, 10.0)):
            if not (isinstance(v, (int, float)) and lo < float(v) <= hi):
                raise ConfigError(f"optimizer.{name}", f"bad value {v!r}", f"a number in ({lo:g}, {hi:g}]")
        self.target_change = float(target_change)
        self.success = min(float(success), 0.95)
        self.adapt = float(adapt)
        self.radius_fraction = float(radius)
        self.min_sigma, self.max_sigma = float(min_sigma), float(max_sigma)
        self.sigma_rate = float(sigma_rate)
        self.prior, self.lr, self.pairs = float(prior), float(lr), bool(pairs)
        self.scales = np.ones(self.n)
        self._rng = _new_generator(self.seed)
        self.centre = self.x0.copy()
        self._set_direction(-self.x0 if np.linalg.norm(self.x0) > 0 else self._rng.standard_normal(self.n))
        self.dir_sigma = float(sigma0)
        self.step, self.last_move = float(adapt), 0.0  # bisection on the log radius
        self.history: list[tuple[float, float, float]] = []  # (rho, sigma, share reaching the target)
        self._dirs: np.ndarray | None = None
        self._change: np.ndarray | None = None

    def _set_direction(self, d: np.ndarray) -> None:
        d = np.asarray(d, dtype=np.float64)
        length = float(np.linalg.norm(d))
        if not np.isfinite(length) or length == 0:
            raise ConfigError("reference", "the contrast control does not move the reference's code",
                              "a reference that differs from a uniform image")
        self.direction = d / length
        # Perturbation scale per coordinate: with prior p, sqrt((1 - p) + p * n * d_i^2) (mean square 1), so
        # coordinates where the contrast control moves the reference are searched more.
        self.scales = np.sqrt((1 - self.prior) + self.prior * self.n * self.direction**2)
        self.full_length = length
        self.rho = self.radius_fraction * length

    def attach(self, generator, reference_image: np.ndarray, mode: str) -> None:
        """Seed the direction with the contrast control: reference -> its mean luminance (uniform image)."""
        if mode != "adversarial":
            raise ConfigError("optimizer.name", f"'shell' searches for the adversarial probe, not {mode!r}",
                              "sepcma | cma | genetic")
        if self.generation > 0:
            return
        ref = np.asarray(reference_image, dtype=np.float64)
        grey = np.full_like(ref, ref.mean())[None].astype(np.float32)
        try:
            target = np.asarray(generator.encode(grey), dtype=np.float64)[0]
        except NotImplementedError:
            return  # keep "toward code 0"
        self._set_direction(target - self.centre)

    @property
    def mean(self) -> np.ndarray:
        return self.centre + self.rho * self.direction

    @property
    def sigma(self) -> float:
        return float(self.dir_sigma)

    def _ask(self) -> np.ndarray:
        half = (self.popsize + 1) // 2
        xi = self._rng.standard_normal((half, self.n)) * (self.scales / np.sqrt(self.n))
        xi = np.concatenate([xi, -xi])[: self.popsize]  # mirrored pairs
        dirs = self.direction[None] + self.dir_sigma * xi
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        self._dirs = dirs
        return self.centre[None] + self.rho * dirs

    def tell_measured(self, codes: np.ndarray, fitness: np.ndarray, change: np.ndarray) -> None:
        """Tell with each candidate's measured relative change |r - r_ref| / r_ref (what this search ranks)."""
        self._change = np.asarray(change, dtype=np.float64).copy()
        try:
            self.tell(codes, fitness)
        finally:
            self._change = None

    def _tell(self, codes: np.ndarray, fitness: np.ndarray) -> None:
        dirs = self._dirs if self._dirs is not None else self._directions_of(codes)
        change = self._change
        score = change if change is not None else fitness
        mu = max(1, self.popsize // 2)
        order = np.argsort(-score, kind="stable")[:mu]
        w = np.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
        w /= w.sum()
        if self.pairs and self.popsize >= 2:
            # Mirrored pairs: the difference of a pair's changes weighs its perturbation (the pair shares
            # the shell and the mean, so their common part cancels), a noisy directional derivative.
            k = self.popsize // 2
            half = (self.popsize + 1) // 2
            diff = score[:k] - score[half:half + k]
            xi = dirs[:k] - dirs[half:half + k]
            norm = float(np.sqrt((diff**2).sum())) or 1.0
            step = (diff[:, None] * xi).sum(0) / norm / np.sqrt(k)
            new = self.direction + self.lr * step
        else:
            new = self.direction + self.lr * ((w[:, None] * dirs[order]).sum(0) - self.direction)
        if np.linalg.norm(new) > 0:
            self.direction = new / np.linalg.norm(new)
        if change is not None:
            share = float(np.mean(change >= self.target_change))
            move = (self.success - share) / self.success
            # Bisection: the log-radius step shrinks when the answer flips (the target change lies between
            # the last two radii) and grows back while it keeps one side, within [adapt / 8, adapt].
            if move * self.last_move < 0:
                self.step *= 0.6
            elif move * self.last_move > 0:
                self.step *= 1.2
            self.step = float(np.clip(self.step, self.adapt / 8, self.adapt))
            self.last_move = move if move != 0 else self.last_move
            self.rho *= float(np.exp(self.step * move))
            self.rho = float(np.clip(self.rho, 1e-6 * self.full_length, 2.0 * self.full_length))
            # The angle: widen while the best half clearly beats the rest, narrow when ranks are noise.
            spread = float(score[order].mean() - np.delete(score, order).mean()) if mu < len(score) else 0.0
            scale = max(float(np.mean(np.abs(score))), 1e-12)
            self.dir_sigma *= float(np.exp(self.sigma_rate * (np.tanh(spread / scale / 0.2) - 0.5)))
            self.dir_sigma = float(np.clip(self.dir_sigma, self.min_sigma, self.max_sigma))
            self.history.append((self.rho, self.dir_sigma, share))
        self._dirs = None

    def _directions_of(self, codes: np.ndarray) -> np.ndarray:
        d = np.asarray(codes, dtype=np.float64) - self.centre[None]
        return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-300)

    def _snapshot(self) -> dict[str, Any]:
        attrs = super()._snapshot()
        attrs["_rng"] = self._rng.bit_generator.state
        return attrs

    def _load(self, attrs: dict[str, Any]) -> None:
        attrs = dict(attrs)
        rng_state = attrs.pop("_rng")
        super()._load(attrs)
        self._rng = _generator_from_state(rng_state)


OPTIMIZERS.setdefault(ShellSearch.name, ShellSearch)
