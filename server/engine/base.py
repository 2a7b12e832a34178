"""The engine's small interfaces: what a generator, a representation stage and a subject must provide.

Everything here is pure computation on numpy arrays (no I/O, no HTTP, ZeroMQ or SQL), so the same objects
serve the in-silico runner, the live orchestrator and offline replay.

Conventions used across the engine:
- a *code* batch is float64 ``(B, n)``;
- an *image* batch is float32 ``(B, H, W, 3)`` with values in [0, 1] (RGB, channels last);
- a *feature* batch is float32/float64 ``(B, d)``;
- a *rate* batch is float64 ``(B, U)`` in spikes/s for U target units.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class ConfigError(ValueError):
    """A bad configuration value. The message is one line naming the field and what is allowed."""

    def __init__(self, field: str, problem: str, allowed: object | None = None):
        msg = f"{field}: {problem}"
        if allowed is not None:
            if isinstance(allowed, (list, tuple, set, frozenset)):
                allowed = ", ".join(sorted(map(str, allowed)))
            msg += f" (allowed: {allowed})"
        super().__init__(msg)
        self.field = field


class ImageGenerator(ABC):
    """Maps latent codes to images. Codes are absolute (not deltas)."""

    name: str = "?"
    code_size: int
    image_shape: tuple[int, int, int]  # (H, W, 3)

    @abstractmethod
    def render(self, codes: np.ndarray) -> np.ndarray:
        """(B, n) codes -> (B, H, W, 3) float32 images in [0, 1]."""

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) images -> (B, n) codes whose render approximates the images."""
        raise NotImplementedError(f"generator {self.name!r} cannot encode images")

    def project(self, codes: np.ndarray) -> np.ndarray:
        """Map proposals into the generator's admissible set (identity unless the generator is bounded)."""
        return codes

    def check_codes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.float64)
        if codes.ndim == 1:
            codes = codes[None]
        if codes.ndim != 2 or codes.shape[1] != self.code_size:
            raise ConfigError(
                "code", f"wrong code size {codes.shape[-1]} for generator {self.name!r}", self.code_size
            )
        if not np.all(np.isfinite(codes)):
            raise ConfigError("code", "contains NaN or infinite values", "finite numbers")
        return codes


class Stage(ABC):
    """An upstream representation in which distances to the reference are measured."""

    name: str = "?"

    @abstractmethod
    def features(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) images in [0, 1] -> (B, d) features."""


class Subject(ABC):
    """Something that responds to images: a model neuron, a CNN unit, or (live) a recorded neuron."""

    name: str = "?"
    n_units: int = 1

    @abstractmethod
    def rate(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) images -> (B, U) expected firing rates in spikes/s (noise-free)."""

    def counts(self, images: np.ndarray, window_s: float, rng: np.random.Generator) -> np.ndarray:
        """Poisson spike counts in a response window of ``window_s`` seconds, (B, U) int64."""
        lam = np.clip(self.rate(images), 0.0, None) * window_s
        return rng.poisson(lam).astype(np.int64)


def presentation_rng(seed: int, generation: int, order: int, attempt: int = 0) -> np.random.Generator:
    """The generator of one presentation's simulated spikes, keyed by its place in the session.

    The in-silico rig and the simulated recording bridge both draw from it, so a live session on the
    simulated rig gets exactly the counts an in-silico run with the same seed gets, however the
    presentations were timed or how often the bridge polled.
    """
    return np.random.default_rng([int(seed), 0xC0DE, int(generation), int(order), int(attempt)])


def presentation_counts(rates: np.ndarray, window_s: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson spike counts (U,) for expected rates (U,) over a window; the first draw from ``rng``."""
    return rng.poisson(np.clip(np.asarray(rates, dtype=np.float64), 0.0, None) * window_s).astype(np.int64)


class SeedStreams:
    """Independent seeded streams for each random need of a session, all derived from its one seed.

    ``seed("probe")``, ``rng("x0")``, ``noise_seed(mode)``: the same names give the same numbers in every
    process, so a stored session can be replayed and a simulated rig can match an in-silico run.
    """

    NAMES = ("maximize", "probe", "noise", "x0", "natural")

    def __init__(self, seed: int):
        ss = np.random.SeedSequence(int(seed))
        self._seeds = dict(zip(self.NAMES, ss.spawn(len(self.NAMES))))

    def seed(self, name: str) -> int:
        return int(self._seeds[name].generate_state(1)[0])

    def rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng(self._seeds[name])

    def noise_seed(self, mode: str) -> int:
        """Seed of the simulated spike counts of a phase (``maximize``, ``invariance``, ``adversarial``)."""
        return int(np.random.SeedSequence([self.seed("noise"), sum(map(ord, mode)), len(mode)]).generate_state(1)[0])


def as_displayed(images: np.ndarray) -> np.ndarray:
    """Images as an 8-bit display shows them (float32 in [0, 1]): what a neuron, real or simulated, sees."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        a = np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    return a.astype(np.float32) / np.float32(255.0)
