"""The compared methods, all behind one ask/tell interface driven by the harness.

A method proposes codes (already in the ball), is told their Poisson spike counts and this generation's
reference counts, and at any time can *report*: the presented candidates it would call its front (from its
own noisy estimates) and the single image it would hand back. Indices refer to the order of presentation.

- ``random``: codes z_ref + sigma N(0, I), projected (one method per sigma);
- ``reference`` / ``reference-sep``: the published scheme re-implemented from sns-method.md: CMA-ES
  (pycma full, or separable) with popsize 50 and sigma0 1, per-generation non-dominated sort of (stretch,
  squeeze) with the reference's onevar (invariance) / random (adversarial) order, the reference rate from
  this generation's own presentations, early stopping against natural images, and the reported solution
  the newest member of the global front (the scored code: its selection defect fixed);
- ``nsga2``: pymoo's NSGA-II through its ask/tell interface (popsize 50, default operators), started from
  the same first-generation distribution as the reference scheme;
- ``snslab``: the engine's SnSSearch (server/engine/search.py) with the project's default settings.
"""

from __future__ import annotations

import numpy as np

from server.engine.optimizers import make_optimizer
from server.engine.pareto import first_front, newest_of_global_front, nondominated_sort, scalar_fitness
from server.engine.pareto import within_front_key
from server.engine.probes import EarlyStop

from .fronts import Instance

POPSIZE = 50
REFERENCE_SHOWS = 4  # the reference image is shown this many times per generation


class Method:
    name = "?"

    def __init__(self, inst: Instance, window_s: float, seed: int):
        self.inst = inst
        self.window_s = window_s
        self.seed = seed
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
        self.done = False
        self.generation = 0
        # per presented candidate: stretch (code units), measured rate, generation, fitness told
        self._d_low: list[np.ndarray] = []
        self._rate: list[np.ndarray] = []
        self._ref_rate: list[float] = []  # per generation, the estimate used to score it
        self._gen: list[np.ndarray] = []
        self._fit: list[np.ndarray] = []

    # the interface ------------------------------------------------------------------------------
    def ask(self) -> np.ndarray:
        raise NotImplementedError

    def tell(self, counts: np.ndarray, ref_counts: np.ndarray) -> None:
        raise NotImplementedError

    def report(self) -> tuple[np.ndarray, int]:
        """(indices of the reported front, index of the selected image): the reference's rule, on the
        raw objectives each candidate was scored with."""
        F = self._raw_objectives()
        gen = np.concatenate(self._gen)
        fit = np.concatenate(self._fit)
        front = np.flatnonzero(first_front(F))
        return front, newest_of_global_front(F, gen, fit)

    # helpers ------------------------------------------------------------------------------------
    @property
    def probe(self) -> str:
        return self.inst.probe

    def _record(self, codes: np.ndarray, rates: np.ndarray, ref_rate: float, fitness: np.ndarray | None):
        self._d_low.append(np.linalg.norm(codes - self.inst.z_ref, axis=1))
        self._rate.append(np.asarray(rates, dtype=np.float64))
        self._ref_rate.append(float(ref_rate))
        self._gen.append(np.full(len(codes), self.generation))
        self._fit.append(np.zeros(len(codes)) if fitness is None else np.asarray(fitness, dtype=np.float64))

    def _raw_objectives(self) -> np.ndarray:
        d_low = np.concatenate(self._d_low)
        d_high = np.concatenate([np.abs(r - rr) for r, rr in zip(self._rate, self._ref_rate)])
        return objectives_max(d_low, d_high, self.probe)


def objectives_max(d_low: np.ndarray, d_high: np.ndarray, probe: str) -> np.ndarray:
    """(N, 2) maximised SnS objectives: invariance (+stretch, -|dr|), adversarial (-stretch, +|dr|)."""
    if probe == "invariance":
        return np.stack([d_low, -d_high], axis=1)
    return np.stack([-d_low, d_high], axis=1)


def natural_codes(space, count: int, rng: np.random.Generator) -> np.ndarray:
    """Natural-like codes: 1/f amplitude over DCT frequency, random signs, contrast (norm) in [R/2, R]."""
    uv = space.generator.basis_index[:, :2].astype(np.float64)
    amp = 1.0 / np.maximum(np.hypot(uv[:, 0], uv[:, 1]), 1.0)
    z = amp * rng.standard_normal((count, space.n))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    return z * space.radius * rng.uniform(0.5, 1.0, (count, 1))


def natural_threshold(inst: Instance, probe: str) -> float:
    """The reference's early-stopping threshold: max (invariance) or min (adversarial) natural response."""
    rates = inst.unit.rate(natural_codes(inst.space, 500, np.random.default_rng(99)))
    return float(rates.max() if probe == "invariance" else rates.min())


def reference_x0(inst: Instance, rng: np.random.Generator, start: str = "reference") -> np.ndarray:
    """The first mean. "reference": the reference code (both probes). "published": as the reference code
    does, the reference code for adversarial runs and N(0, s^2 I), s = sqrt(0.01 |mean(z_ref)|), for
    invariance runs (on these units that start sees no response at all within 10k presentations)."""
    if inst.probe == "adversarial" or start == "reference":
        return inst.z_ref.copy()
    s = np.sqrt(0.01 * abs(float(inst.z_ref.mean())))
    return s * rng.standard_normal(inst.space.n)


# --------------------------------------------------------------------------------------------------- random
class RandomSearch(Method):
    def __init__(self, inst, window_s, seed, sigma: float = 0.5):
        super().__init__(inst, window_s, seed)
        self.sigma = sigma
        self.name = f"random-{sigma:g}"

    def ask(self):
        z = self.inst.z_ref + self.sigma * self.rng.standard_normal((POPSIZE, self.inst.space.n))
        self._codes = self.inst.space.project(z)
        return self._codes

    def tell(self, counts, ref_counts):
        rates = counts / self.window_s
        self._record(self._codes, rates, ref_counts.mean() / self.window_s, None)
        self.generation += 1


# ------------------------------------------------------------------------------------------ reference SnS
class ReferenceSnS(Method):
    """The published scheme (see module docstring). ``optimizer`` is "cma" (full) or "sepcma"."""

    def __init__(self, inst, window_s, seed, optimizer: str = "cma", ordering: str | None = None,
                 start: str = "reference", early_stop: bool | None = None, tell: str = "raw",
                 reference_estimate: str = "generation", popsize: int = POPSIZE):
        super().__init__(inst, window_s, seed)
        # Ablation switches (defaults = the published scheme): tell the optimizer the projected codes it
        # scored instead of its raw samples; estimate the reference rate from the whole session.
        self.tell_projected = tell == "projected"
        self.session_reference = reference_estimate == "session"
        self._ref_sum, self._ref_n = 0.0, 0
        self.name = "reference" if optimizer == "cma" else f"reference-{optimizer}"
        self.ordering = ordering or ("onevar" if inst.probe == "invariance" else "random")
        x0 = reference_x0(inst, self.rng, start)
        self.opt = make_optimizer(optimizer, x0, 1.0, int(popsize), seed=int(seed))
        if early_stop is None:
            # The invariance rule ("stop once 45 of 50 respond above the natural maximum") marks arrival
            # from a noise start; from the reference code it would fire at generation 5, so it applies
            # only to the published start. The adversarial rule applies as published.
            early_stop = inst.probe == "adversarial" or start == "published"
        self.stopper = EarlyStop(inst.probe, natural_threshold(inst, inst.probe)) if early_stop else None

    def ask(self):
        self._raw = self.opt.ask()
        self._codes = self.inst.space.project(self._raw)
        return self._codes

    def tell(self, counts, ref_counts):
        rates = counts / self.window_s
        ref_rate = ref_counts.mean() / self.window_s  # this generation's presentations only
        self._ref_sum += float(ref_counts.sum() / self.window_s)
        self._ref_n += len(ref_counts)
        if self.session_reference:
            ref_rate = self._ref_sum / self._ref_n
        d_low = np.linalg.norm(self._codes - self.inst.z_ref, axis=1)
        F = objectives_max(d_low, np.abs(rates - ref_rate), self.probe)
        fronts = nondominated_sort(F)
        key = within_front_key(self.ordering, F, fronts, self.probe == "invariance", 1, self.rng)
        fitness = scalar_fitness(fronts, key)
        self.opt.tell(self._codes if self.tell_projected else self._raw, fitness)
        self._record(self._codes, rates, ref_rate, fitness)
        if self.stopper is not None and self.stopper.should_stop(self.generation, rates):
            self.done = True
        self.generation += 1


# ------------------------------------------------------------------------------------------------ NSGA-II
class NSGA2Method(Method):
    name = "nsga2"
    bound = 16.0  # per-coordinate box pymoo's operators need; the ball (R = 64) is well inside it in effect

    def __init__(self, inst, window_s, seed, start: str = "reference"):
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.problem import Problem

        super().__init__(inst, window_s, seed)
        n = inst.space.n
        x0 = reference_x0(inst, self.rng, start)
        first = np.clip(x0 + self.rng.standard_normal((POPSIZE, n)), -self.bound, self.bound)
        self.problem = Problem(n_var=n, n_obj=2, xl=-self.bound, xu=self.bound)
        self.algorithm = NSGA2(pop_size=POPSIZE, sampling=first)
        self.algorithm.setup(self.problem, termination=("n_gen", 10**9), seed=int(seed) % (2**31), verbose=False)

    def ask(self):
        self._pop = self.algorithm.ask()
        self._codes = self.inst.space.project(self._pop.get("X"))
        return self._codes

    def tell(self, counts, ref_counts):
        from pymoo.core.evaluator import Evaluator
        from pymoo.problems.static import StaticProblem

        rates = counts / self.window_s
        ref_rate = ref_counts.mean() / self.window_s
        d_low = np.linalg.norm(self._codes - self.inst.z_ref, axis=1)
        F = objectives_max(d_low, np.abs(rates - ref_rate), self.probe)
        Evaluator().eval(StaticProblem(self.problem, F=-F), self._pop)  # pymoo minimises
        self.algorithm.tell(infills=self._pop)
        self._record(self._codes, rates, ref_rate, None)
        self.generation += 1

