"""Ask/tell optimizers over latent codes, with a complete savable state.

Every optimizer maximises: the engine tells scalar SnS scores where HIGHER is better (the CMA-ES libraries
minimise, so the wrappers negate). One generation is ``codes = opt.ask()`` -> render, present, score ->
``opt.tell(codes, scores)``; the engine may repair the asked codes (e.g. project them into a ball) before
telling them. ``opt.state()`` is a byte snapshot of everything, random generators included, so
``Optimizer.restore(snapshot)`` continues the exact same sequence, in this process or another one.

Snapshots are pickles: restore only bytes this server wrote itself.

    >>> import numpy as np
    >>> from server.engine.optimizers import make_optimizer, Optimizer
    >>> centre = np.linspace(-1.0, 1.0, 10)
    >>> opt = make_optimizer("sepcma", x0=np.zeros(10), sigma0=1.0, popsize=20, seed=0)
    >>> for _ in range(150):
    ...     codes = opt.ask()
    ...     opt.tell(codes, -np.sum((codes - centre) ** 2, axis=1))
    >>> snapshot = opt.state()
    >>> again = Optimizer.restore(snapshot)
    >>> bool(np.array_equal(again.ask(), opt.ask())), bool(np.abs(opt.mean - centre).max() < 1e-3)
    (True, True)
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from server.engine.base import ConfigError
from server.engine.optimizer_base import (  # noqa: F401  (re-exported: one import for callers)
    OPTIMIZERS,
    OwnRandomState,
    Optimizer,
    _generator_from_state,
    _new_generator,
)

class SepCMAOptimizer(Optimizer):
    """Separable (diagonal-covariance) CMA-ES from the ``cmaes`` package; the default.

    O(n) per sample, so at n = 4096 a generation takes milliseconds and never stalls on an
    eigendecomposition (full CMA-ES does, for 10+ s).

        >>> import numpy as np
        >>> opt = SepCMAOptimizer(np.zeros(10), sigma0=1.0, popsize=20, seed=1)
        >>> for _ in range(150):
        ...     codes = opt.ask()
        ...     opt.tell(codes, -np.sum((codes - 0.5) ** 2, axis=1))
        >>> bool(np.abs(opt.mean - 0.5).max() < 1e-3)
        True
        >>> opt.generation
        150
    """

    name = "sepcma"

    def __init__(self, x0: np.ndarray, sigma0: float, popsize: int, seed: int):
        from cmaes import SepCMA

        super().__init__(x0, sigma0, popsize, seed)
        self._es = SepCMA(mean=self.x0.copy(), sigma=self.sigma0, population_size=self.popsize, seed=self.seed)

    @property
    def mean(self) -> np.ndarray:
        return np.array(self._es.mean, dtype=np.float64)

    @property
    def sigma(self) -> float:
        return float(self._es._sigma)

    def _ask(self) -> np.ndarray:
        return np.stack([self._es.ask() for _ in range(self.popsize)])

    def _tell(self, codes: np.ndarray, fitness: np.ndarray) -> None:
        self._es.tell([(codes[i].copy(), -float(fitness[i])) for i in range(self.popsize)])

    def _snapshot(self) -> dict[str, Any]:
        # cmaes drops its RandomState when pickled (and re-creates an unseeded one): save it explicitly.
        attrs = super()._snapshot()
        attrs["_es_rng_state"] = self._es._rng.get_state()
        return attrs

    def _load(self, attrs: dict[str, Any]) -> None:
        attrs = dict(attrs)
        rng_state = attrs.pop("_es_rng_state")
        super()._load(attrs)
        self._es._rng = np.random.RandomState()
        self._es._rng.set_state(rng_state)


class _Randn:
    """pycma's ``randn(lam, n)`` option, drawing from our own Generator instead of numpy's global one."""

    def __init__(self, seed: int):
        self.rng = _new_generator(seed)

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)

    def __getstate__(self) -> dict:
        return {"bit_generator_state": self.rng.bit_generator.state}

    def __setstate__(self, state: dict) -> None:
        self.rng = _generator_from_state(state["bit_generator_state"])


class CMAOptimizer(Optimizer):
    """Full-covariance CMA-ES from pycma with its default options, as in the reference implementation.

    Isolated from numpy's global random state (pycma's ``randn`` option is bound to our Generator).
    Slow at n = 4096: ~0.3 s per generation and 10+ s eigendecomposition stalls; a snapshot holds
    the n x n covariance and eigenbasis (hundreds of MB at n = 4096).

        >>> import numpy as np
        >>> opt = CMAOptimizer(np.zeros(10), sigma0=1.0, popsize=20, seed=1)
        >>> for _ in range(150):
        ...     codes = opt.ask()
        ...     opt.tell(codes, -np.sum((codes - 0.5) ** 2, axis=1))
        >>> bool(np.abs(opt.mean - 0.5).max() < 1e-3)
        True
        >>> opt.generation
        150
    """

    name = "cma"

    def __init__(self, x0: np.ndarray, sigma0: float, popsize: int, seed: int):
        import cma

        super().__init__(x0, sigma0, popsize, seed)
        options = {
            "popsize": self.popsize,
            "randn": _Randn(self.seed),
            "seed": self.seed,  # recorded only: pycma seeds numpy's global state only when randn is its own
            "verbose": -9,
            "verb_disp": 0,
            "verb_log": 0,
        }
        self._es = cma.CMAEvolutionStrategy(self.x0.copy(), self.sigma0, options)

    @property
    def mean(self) -> np.ndarray:
        return np.array(self._es.mean, dtype=np.float64)

    @property
    def sigma(self) -> float:
        return float(self._es.sigma)

    def _ask(self) -> np.ndarray:
        return np.stack(self._es.ask())

    def _tell(self, codes: np.ndarray, fitness: np.ndarray) -> None:
        # pycma finds asked codes in its archive (keyed by hash); unknown (repaired) codes are accepted
        # and their Mahalanobis length bounded, as pycma documents for injected solutions. For n >= 300
        # pycma adapts sigma by TPA from a mirrored pair of samples, and warns on every generation when a
        # repair broke the mirror: expected when the caller projects codes, so not worth a log line each.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TPA: apparent inconsistency", category=UserWarning)
            self._es.tell(list(codes), (-fitness).tolist())

    def _load(self, attrs: dict[str, Any]) -> None:
        super()._load(attrs)
        _rekey_solution_dicts(self._es)


def _rekey_solution_dicts(es: Any) -> None:
    """Recompute the keys of pycma's solution archives after unpickling.

    pycma keys them by ``hash(x.tobytes())``, which Python salts per process, so in a new process the
    asked-but-not-told codes of a snapshot would not be found and tell would treat them as foreign.
    """
    from cma.utilities.utils import SolutionDict

    def rekey(sd: SolutionDict) -> None:
        new_key = {k: sd.key(x) for k, x in sd._unhashed_keys.items()}
        sd.data = {new_key.get(k, k): v for k, v in sd.data.items()}
        sd.data_with_same_key = {new_key.get(k, k): v for k, v in sd.data_with_same_key.items()}
        sd._unhashed_keys = {new_key[k]: x for k, x in sd._unhashed_keys.items()}

    for owner in (es, getattr(es, "gp", None), getattr(es, "_round_integer_variables", None)):
        for value in getattr(owner, "__dict__", {}).values():
            if isinstance(value, SolutionDict):
                rekey(value)


class GeneticOptimizer(OwnRandomState, Optimizer):
    """The reference's genetic algorithm: elitism, softmax parent choice, gene-wise crossover, mutation.

    Each generation keeps the ``n_elite`` best codes unchanged; every other child takes each gene from
    one of ``n_parents`` parents (uniformly), the parents drawn with replacement with probability
    softmax(z / temperature), where z is the fitness standardised over the population (z-scoring is our
    choice, so that the temperature does not depend on the arbitrary scale of SnS scores; uniform if all
    scores are equal); each gene then mutates with probability ``mutation_rate`` by N(0, mutation_size^2).
    The first population is x0 + sigma0 * N(0, I).

        >>> import numpy as np
        >>> opt = GeneticOptimizer(np.zeros(10), sigma0=1.0, popsize=50, seed=1)
        >>> for _ in range(200):
        ...     codes = opt.ask()
        ...     fitness = -np.sum((codes - 0.5) ** 2, axis=1)
        ...     opt.tell(codes, fitness)
        >>> bool(fitness.max() > -0.1)
        True
    """

    name = "genetic"
    OPTIONS = {"n_elite": 2, "n_parents": 4, "mutation_rate": 0.3, "mutation_size": 0.3, "temperature": 1.0}

    def __init__(
        self,
        x0: np.ndarray,
        sigma0: float,
        popsize: int,
        seed: int,
        n_elite: int = 2,
        n_parents: int = 4,
        mutation_rate: float = 0.3,
        mutation_size: float = 0.3,
        temperature: float = 1.0,
    ):
        super().__init__(x0, sigma0, popsize, seed)
        if isinstance(n_elite, bool) or not isinstance(n_elite, (int, np.integer)) or not 0 <= n_elite < popsize:
            raise ConfigError("n_elite", f"{n_elite!r} is not a number of kept codes", f"integer in [0, {popsize})")
        if isinstance(n_parents, bool) or not isinstance(n_parents, (int, np.integer)) or n_parents < 1:
            raise ConfigError("n_parents", f"{n_parents!r} is not a number of parents", "integer >= 1")
        if not (isinstance(mutation_rate, (int, float)) and 0.0 <= mutation_rate <= 1.0):
            raise ConfigError("mutation_rate", f"{mutation_rate!r} is not a probability", "number in [0, 1]")
        if not (isinstance(mutation_size, (int, float)) and math.isfinite(mutation_size) and mutation_size >= 0):
            raise ConfigError("mutation_size", f"{mutation_size!r} is not a standard deviation", "finite number >= 0")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ConfigError("temperature", f"{temperature!r} is not a temperature", "finite number > 0")
        self.n_elite = int(n_elite)
        self.n_parents = int(n_parents)
        self.mutation_rate = float(mutation_rate)
        self.mutation_size = float(mutation_size)
        self.temperature = float(temperature)
        self._rng = _new_generator(self.seed)
        self._codes: np.ndarray | None = None  # the last told population and its fitness
        self._fitness: np.ndarray | None = None

    @property
    def mean(self) -> np.ndarray:
        """Mean of the last told population (x0 before the first tell)."""
        return self.x0.copy() if self._codes is None else self._codes.mean(axis=0)

    @property
    def sigma(self) -> float:
        """sigma0 for the first population, then the mutation size."""
        return self.sigma0 if self._codes is None else self.mutation_size

    def parent_probabilities(self, fitness: np.ndarray) -> np.ndarray:
        """softmax(z / temperature) of the standardised fitness."""
        spread = float(np.std(fitness))
        if spread == 0.0:
            return np.full(fitness.shape, 1.0 / fitness.size)
        logits = (fitness - fitness.max()) / spread / self.temperature
        p = np.exp(logits)
        return p / p.sum()

    def _ask(self) -> np.ndarray:
        rng = self._rng
        if self._codes is None:
            return self.x0 + self.sigma0 * rng.standard_normal((self.popsize, self.n))
        codes, fitness = self._codes, self._fitness
        elites = codes[np.argsort(-fitness, kind="stable")[: self.n_elite]]
        n_children = self.popsize - self.n_elite
        parents = rng.choice(self.popsize, size=(n_children, self.n_parents), p=self.parent_probabilities(fitness))
        which = rng.integers(self.n_parents, size=(n_children, self.n))
        source = np.take_along_axis(parents, which, axis=1)  # (children, n): the parent of each gene
        children = codes[source, np.arange(self.n)]
        mutate = rng.random((n_children, self.n)) < self.mutation_rate
        children += mutate * (self.mutation_size * rng.standard_normal((n_children, self.n)))
        return np.concatenate([elites, children])

    def _tell(self, codes: np.ndarray, fitness: np.ndarray) -> None:
        self._codes = codes.copy()
        self._fitness = fitness.copy()


OPTIMIZERS.update({
    "sepcma": SepCMAOptimizer,
    "cma": CMAOptimizer,
    "genetic": GeneticOptimizer,
})
DEFAULT_OPTIMIZER = "sepcma"


def make_optimizer(
    name: str, x0: np.ndarray, sigma0: float, popsize: int, seed: int, **options: Any
) -> Optimizer:
    """Build a registered optimizer; unknown names or options raise ConfigError("optimizer", ...)."""
    klass = OPTIMIZERS.get(name)
    if klass is None:
        raise ConfigError("optimizer", f"unknown optimizer {name!r}", sorted(OPTIMIZERS))
    unknown = sorted(set(options) - set(klass.OPTIONS))
    if unknown:
        raise ConfigError(
            "optimizer", f"unknown option(s) {', '.join(unknown)} for {name!r}",
            sorted(klass.OPTIONS) or "no options",
        )
    return klass(x0, sigma0, popsize, seed, **options)


from . import adversarial  # noqa: E402,F401  (registers "shell", the adversarial probe's search)
