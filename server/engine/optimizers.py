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
import pickle
import warnings
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from server.engine.base import ConfigError

_STATE_FORMAT = "snslab.optimizer/1"


def _new_generator(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _generator_from_state(state: dict) -> np.random.Generator:
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state
    return rng


class Optimizer(ABC):
    """Ask/tell maximiser of a scalar fitness over codes of size n.

    Subclasses implement ``_ask`` / ``_tell``; this class owns argument checks, the pending-ask
    bookkeeping, ``generation`` (number of tells) and the snapshot format.
    """

    name: ClassVar[str] = "?"
    OPTIONS: ClassVar[dict[str, Any]] = {}  # per-optimizer options and their defaults

    def __init__(self, x0: np.ndarray, sigma0: float, popsize: int, seed: int):
        x0 = np.array(x0, dtype=np.float64)  # a copy: libraries update their mean in place
        if x0.ndim != 1 or x0.size < 2:
            raise ConfigError("x0", f"shape {x0.shape} is not a code vector", "1-D array with n >= 2")
        if not np.all(np.isfinite(x0)):
            raise ConfigError("x0", "contains NaN or infinite values", "finite numbers")
        if isinstance(sigma0, bool) or not isinstance(sigma0, (int, float, np.floating, np.integer)):
            raise ConfigError("sigma0", f"{sigma0!r} is not a number", "finite number > 0")
        if not (math.isfinite(sigma0) and sigma0 > 0):
            raise ConfigError("sigma0", f"{sigma0!r} is not a positive step size", "finite number > 0")
        if isinstance(popsize, bool) or not isinstance(popsize, (int, np.integer)) or popsize < 2:
            raise ConfigError("popsize", f"{popsize!r} is not a population size", "integer >= 2")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError("seed", f"{seed!r} is not a seed", "integer >= 0")
        self.x0 = x0
        self.n = int(x0.size)
        self.sigma0 = float(sigma0)
        self.popsize = int(popsize)
        self.seed = int(seed)
        self.generation = 0
        self._pending: np.ndarray | None = None

    # -- interface ---------------------------------------------------------------------------------

    @property
    @abstractmethod
    def mean(self) -> np.ndarray:
        """Current centre of the search, (n,) float64 (a copy)."""

    @property
    @abstractmethod
    def sigma(self) -> float:
        """Current overall step size."""

    @property
    def pending(self) -> np.ndarray | None:
        """The codes of the last ask not yet told (a copy), or None; survives state()/restore()."""
        return None if self._pending is None else self._pending.copy()

    def ask(self) -> np.ndarray:
        """The next population, (popsize, n) float64. One ask per tell."""
        if self._pending is not None:
            raise RuntimeError(
                f"ask: generation {self.generation} was already asked and not told; "
                "tell it first (the asked codes are in .pending)"
            )
        codes = np.array(self._ask(), dtype=np.float64, order="C")
        assert codes.shape == (self.popsize, self.n), codes.shape
        self._pending = codes
        return codes.copy()

    def tell(self, codes: np.ndarray, fitness: np.ndarray) -> None:
        """Update with the scored population; HIGHER fitness is better.

        ``codes`` are the asked codes, possibly repaired (projected) by the caller, in the asked order.
        """
        if self._pending is None:
            raise RuntimeError("tell: no pending ask; call ask() first (one tell per ask)")
        codes = self._check_codes(codes)
        fitness = self._check_fitness(fitness)
        self._tell(codes, fitness)
        self._pending = None
        self.generation += 1

    # -- snapshots ---------------------------------------------------------------------------------

    def state(self) -> bytes:
        """A complete snapshot (parameters, library state, every random generator's state)."""
        payload = {"format": _STATE_FORMAT, "optimizer": self.name, "attrs": self._snapshot()}
        return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, state: bytes) -> Optimizer:
        """Rebuild the optimizer of the right subclass from ``state()`` bytes."""
        try:
            payload = pickle.loads(state)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a snapshot"
            raise ConfigError("state", f"not an optimizer snapshot ({type(exc).__name__})") from exc
        if not isinstance(payload, dict) or payload.get("format") != _STATE_FORMAT:
            raise ConfigError("state", "not an optimizer snapshot", _STATE_FORMAT)
        klass = OPTIMIZERS.get(payload.get("optimizer"))
        if klass is None:
            raise ConfigError("state", f"unknown optimizer {payload.get('optimizer')!r}", sorted(OPTIMIZERS))
        if not issubclass(klass, cls):
            raise ConfigError("state", f"snapshot of {klass.name!r}, not of {cls.name!r}", cls.name)
        obj = klass.__new__(klass)
        obj._load(payload["attrs"])
        return obj

    def _snapshot(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def _load(self, attrs: dict[str, Any]) -> None:
        self.__dict__.update(attrs)

    # -- subclass hooks ----------------------------------------------------------------------------

    @abstractmethod
    def _ask(self) -> np.ndarray: ...

    @abstractmethod
    def _tell(self, codes: np.ndarray, fitness: np.ndarray) -> None: ...

    # -- checks ------------------------------------------------------------------------------------

    def _check_codes(self, codes: np.ndarray) -> np.ndarray:
        try:
            codes = np.asarray(codes, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ConfigError("codes", f"not numeric ({exc})", f"float array ({self.popsize}, {self.n})")
        if codes.shape != (self.popsize, self.n):
            raise ConfigError(
                "codes", f"shape {codes.shape} does not match the asked population",
                f"shape ({self.popsize}, {self.n})",
            )
        if not np.all(np.isfinite(codes)):
            raise ConfigError("codes", "contains NaN or infinite values", "finite numbers")
        return codes

    def _check_fitness(self, fitness: np.ndarray) -> np.ndarray:
        try:
            fitness = np.asarray(fitness, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ConfigError("fitness", f"not numeric ({exc})", f"{self.popsize} finite numbers")
        if fitness.shape != (self.popsize,):
            raise ConfigError(
                "fitness", f"shape {fitness.shape} does not match the asked population",
                f"shape ({self.popsize},), one finite score per code",
            )
        if not np.all(np.isfinite(fitness)):
            raise ConfigError("fitness", "contains NaN or infinite values", "finite numbers, higher is better")
        return fitness


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


class GeneticOptimizer(Optimizer):
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

    def _snapshot(self) -> dict[str, Any]:
        attrs = super()._snapshot()
        attrs["_rng"] = self._rng.bit_generator.state
        return attrs

    def _load(self, attrs: dict[str, Any]) -> None:
        attrs = dict(attrs)
        rng_state = attrs.pop("_rng")
        super()._load(attrs)
        self._rng = _generator_from_state(rng_state)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sepcma": SepCMAOptimizer,
    "cma": CMAOptimizer,
    "genetic": GeneticOptimizer,
}
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
