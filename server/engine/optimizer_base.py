"""The ask/tell optimizer interface, its snapshot format and the registry of optimizers by name.

Concrete optimizers live in server.engine.optimizers (the CMA-ES family, genetic) and
server.engine.adversarial (the adversarial probe's shell search); each registers itself in ``OPTIMIZERS``
so a snapshot names its optimizer and ``Optimizer.restore`` finds the class again.
"""

from __future__ import annotations

import math
import pickle
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


class OwnRandomState:
    """Mixin for optimizers that draw from their own numpy Generator ``self._rng``: the snapshot carries its
    state (a pickled Generator would not restore the same stream everywhere)."""

    def _snapshot(self) -> dict[str, Any]:
        attrs = super()._snapshot()
        attrs["_rng"] = self._rng.bit_generator.state
        return attrs

    def _load(self, attrs: dict[str, Any]) -> None:
        attrs = dict(attrs)
        rng_state = attrs.pop("_rng")
        super()._load(attrs)
        self._rng = _generator_from_state(rng_state)


OPTIMIZERS: dict[str, type[Optimizer]] = {}  # name -> class; filled by the modules that define them
