"""Seeded random streams: every random choice of a session derives from its one stored seed."""

from __future__ import annotations

import numpy as np


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
