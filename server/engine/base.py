"""The engine's small interfaces: what a generator, a representation stage and a subject must provide.

``Subject``, ``ConfigError`` and the seed streams live in snslab_common (the rig packages share them);
they are re-exported here so the engine has one import for its interfaces.

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

from snslab_common.errors import ConfigError
from snslab_common.neurons import Subject
from snslab_common.seeds import SeedStreams, as_displayed, presentation_counts, presentation_rng

__all__ = [
    "ConfigError", "ImageGenerator", "SeedStreams", "Stage", "Subject", "as_displayed", "presentation_counts",
    "presentation_rng",
]


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
