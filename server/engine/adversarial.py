"""The adversarial probe's own search: the smallest change of the reference that changes the response.

Issue 12: started at the reference code with small steps, a CMA-ES ranked by Pareto fronts barely moves the
response of a saturating reference (its first steps are all on the flat top), and plain contrast reduction
toward the mean luminance halves the response at a smaller stretch. This search asks one question per
generation, "at distance rho from the reference, which directions change the response most?", and moves
rho toward the distance at which the target change (``target_change`` of the reference's rate; 0.5 halves
it) is just reached:

- every candidate lies on the shell ||z - z_ref|| = rho (code units), in a direction near the current mean
  direction m (mirrored pairs m +- sigma xi, normalised: a local search whose step is an angle);
- m starts along the contrast control (the code of the reference's mean-luminance image, when the
  generator can encode images; else toward code 0), so the search is seeded with that control and can
  only report something better than it by improving on it;
- m moves ``lr`` of the way to the weighted mean of the best half of the directions, ranked by the
  measured change of the response (a (mu/mu_w, lambda) evolution strategy on the sphere, with a learning
  rate below 1 because single spike counts rank noisily);
- rho is a stochastic bisection on the stretch budget: shrunk when more than ``success`` of the generation
  reached the target, grown when fewer did; the log step shrinks when the answer flips and grows back while
  it does not (noise is averaged over the generation before rho moves);
- every ``sweep_every``-th generation lies farther, at exp(sweep) times rho, and moves nothing: it covers the
  larger changes of the front (the whole adversarial front is what the sample-efficiency study scores) at a
  sixth of the budget. (Alternating with generations nearer than rho covered no more of the front and cost
  margin: their few lucky low counts near the reference drew re-tests and verification.)

The reported image is chosen by the probe's front confirmation (server.engine.confirm) and, in silico,
re-measured (server.engine.verify): the nearest image whose change of rate is established on fresh
presentations. Per-stage ``bounds`` limit the front and the reported image, not this
search's ranking (use ``sepcma`` to rank by bounded fronts). All state is plain arrays and one numpy
Generator: ``state()`` and ``restore()`` are exact. Measured on 12 model units x 3 seeds and in the
sample-efficiency study: docs/benchmarks.md (issue 12).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .base import ConfigError
from .optimizer_base import OPTIMIZERS, Optimizer, OwnRandomState, _new_generator


class ShellSearch(OwnRandomState, Optimizer):
    """Adversarial search on shells around the reference code (see the module docstring).

    ``sigma0`` is the angle scale of the perturbations (tan of their typical angle to the mean direction);
    ``radius`` the first shell's radius as a fraction of the contrast control's full length (reference ->
    uniform mean-luminance image). Until ``attach`` gives it the generator and reference image it searches
    from the reference toward code 0.
    """

    name = "shell"
    OPTIONS: ClassVar[dict[str, Any]] = {"target_change": 0.5, "success": 0.5, "adapt": 0.3, "radius": 0.25,
                                         "lr": 0.3, "sweep": 0.7, "sweep_every": 6}

    def __init__(self, x0: np.ndarray, sigma0: float, popsize: int, seed: int, *, target_change: float = 0.5,
                 success: float = 0.5, adapt: float = 0.3, radius: float = 0.25, lr: float = 0.3,
                 sweep: float = 0.7, sweep_every: int = 6):
        super().__init__(x0, sigma0, popsize, seed)
        for name, v, lo, hi in (("target_change", target_change, 0.0, 1.0), ("success", success, 0.0, 0.95),
                                ("radius", radius, 0.0, 1e6), ("adapt", adapt, 0.0, 10.0), ("lr", lr, 0.0, 1.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < float(v) <= hi:
                raise ConfigError(f"optimizer.{name}", f"bad value {v!r}", f"a number in ({lo:g}, {hi:g}]")
        if isinstance(sweep, bool) or not isinstance(sweep, (int, float)) or not 0 <= float(sweep) <= 5:
            raise ConfigError("optimizer.sweep", f"bad value {sweep!r}", "a number in [0, 5] (0: no sweep)")
        if isinstance(sweep_every, bool) or not isinstance(sweep_every, int) or sweep_every < 0:
            raise ConfigError("optimizer.sweep_every", f"bad value {sweep_every!r}", "an integer >= 0 (0: never)")
        self.target_change, self.success, self.adapt = float(target_change), float(success), float(adapt)
        self.radius_fraction, self.lr = float(radius), float(lr)
        self.sweep, self.sweep_every = float(sweep), int(sweep_every)
        self._rng = _new_generator(self.seed)
        self.centre = self.x0.copy()
        self._set_direction(-self.x0 if np.linalg.norm(self.x0) > 0 else self._rng.standard_normal(self.n))
        self.dir_sigma = float(sigma0)
        self.step, self.last_move = float(adapt), 0.0  # bisection on the log radius
        self.history: list[tuple[float, float]] = []  # per on-target generation: (rho, share reaching target)
        self._dirs: np.ndarray | None = None
        self._change: np.ndarray | None = None

    def _set_direction(self, d: np.ndarray) -> None:
        d = np.asarray(d, dtype=np.float64)
        length = float(np.linalg.norm(d))
        if not np.isfinite(length) or length == 0:
            raise ConfigError("reference", "the contrast control does not move the reference's code",
                              "a reference that differs from a uniform image")
        self.direction = d / length
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

    def _sweep_factor(self) -> float:
        """1 on the target radius; exp(sweep) (farther) every ``sweep_every``-th generation."""
        if self.sweep_every <= 0 or self.generation % self.sweep_every != self.sweep_every - 1:
            return 1.0
        return float(np.exp(self.sweep))

    def _ask(self) -> np.ndarray:
        half = (self.popsize + 1) // 2
        xi = self._rng.standard_normal((half, self.n)) / np.sqrt(self.n)
        xi = np.concatenate([xi, -xi])[: self.popsize]  # mirrored pairs
        dirs = self.direction[None] + self.dir_sigma * xi
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        self._dirs = dirs
        return self.centre[None] + self.rho * self._sweep_factor() * dirs

    def tell_measured(self, codes: np.ndarray, fitness: np.ndarray, change: np.ndarray) -> None:
        """Tell with each candidate's measured relative change |r - r_ref| / r_ref (what this search ranks)."""
        self._change = np.asarray(change, dtype=np.float64).copy()
        try:
            self.tell(codes, fitness)
        finally:
            self._change = None

    def _tell(self, codes: np.ndarray, fitness: np.ndarray) -> None:
        dirs = self._dirs if self._dirs is not None else self._directions_of(codes)
        self._dirs = None
        change = self._change
        if change is not None and self._sweep_factor() != 1.0:
            return  # a coverage generation: its ranks off the target radius are mostly noise
        score = change if change is not None else fitness
        mu = max(1, self.popsize // 2)
        order = np.argsort(-score, kind="stable")[:mu]
        w = np.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
        new = self.direction + self.lr * ((w[:, None] * dirs[order]).sum(0) / w.sum() - self.direction)
        if np.linalg.norm(new) > 0:
            self.direction = new / np.linalg.norm(new)
        if change is None:
            return
        share = float(np.mean(change >= self.target_change))
        move = (self.success - share) / self.success
        # Bisection: the log-radius step shrinks when the answer flips (the target change lies between the
        # last two radii) and grows back while it keeps one side, within [adapt / 8, adapt].
        if move * self.last_move < 0:
            self.step *= 0.6
        elif move * self.last_move > 0:
            self.step *= 1.2
        self.step = float(np.clip(self.step, self.adapt / 8, self.adapt))
        self.last_move = move if move != 0 else self.last_move
        self.rho = float(np.clip(self.rho * np.exp(self.step * move), 1e-6 * self.full_length,
                                 2.0 * self.full_length))
        self.history = [*self.history[-199:], (self.rho, share)]  # (bounded: it is in every stored state)

    def _directions_of(self, codes: np.ndarray) -> np.ndarray:
        d = np.asarray(codes, dtype=np.float64) - self.centre[None]
        return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-300)


OPTIMIZERS.setdefault(ShellSearch.name, ShellSearch)
