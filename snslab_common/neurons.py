"""Model neurons with known answers: the subjects of in-silico runs and of the simulated rig (numpy only).

Model neurons (docs/benchmark-protocol.md) see dx = grey(image) - 0.5 (grey = mean of RGB) through unit-norm
quadrature Gabor filters and fire at the Naka-Rushton rate

    lambda = baseline + gain * u^n / (u^n + c50^n)      (defaults 2 + 100 * u^2 / (u^2 + c50^2) spikes/s)

with a unit-specific drive u:
- complex-cell: u = (g0.dx)^2 + (g90.dx)^2 (phase invariant);
- simple-cell:  u = max(g0.dx, 0)^2;
- pooled-unit:  u = T log mean_k exp(E_k / T), E_k the energies of 4 or 9 shifted quadrature pairs
                (a soft maximum, between the mean and the max; translation invariant);
- mixed-unit:   u = E + alpha * max(g0.dx, 0)^2 (breaks the z -> -z symmetry of the complex cell).

Default c50: the drive produced by the unit's matched image at 20% contrast (a typical V1 semi-saturation
contrast), so that image gives exactly half-max (baseline + gain / 2) and random textures of moderate
contrast already drive the unit above baseline, as real neurons are driven (with c50 at 50% contrast a
search from a blank screen sees only baseline firing under Poisson noise). The matched image is the complex cell's most exciting image (MEI) pattern
0.5 + 0.5 * contrast * sign(g_phi*) for the complex and pooled units (the pooled unit's centre pair), and
0.5 + 0.5 * contrast * sign(g0) for the simple and mixed units. The drive of these patterns is quadratic in
contrast (for the pooled unit too: the full-field pattern drives all its pairs equally), so at contrast 1 they
give u = 25 * c50 and a rate of baseline + gain * 625/626 (101.8 spikes/s with the defaults).

The response depends on the image only through ``filter_outputs`` (filters . dx), so exact-maths users can
project ``filters`` into a generator's code space and call ``drive_from_outputs``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from snslab_common.errors import ConfigError
from snslab_common.gabor import gabor_pair, to_rgb
from snslab_common.imaging import as_image_batch, grey, number, positive, size2
from snslab_common.registry import make_from_registry


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


DEFAULT_C50_CONTRAST = 0.2


def naka_rushton(u: np.ndarray, baseline: float = 2.0, gain: float = 100.0, exponent: float = 2.0,
                 c50: float = 1.0) -> np.ndarray:
    """baseline + gain * u^n / (u^n + c50^n), for u >= 0 (negative drives count as 0)."""
    un = np.power(np.maximum(np.asarray(u, dtype=np.float64), 0.0), exponent)
    return baseline + gain * un / (un + c50**exponent)


class ModelNeuron(Subject):
    """Shared machinery of the Gabor model neurons; subclasses define the filters and the drive."""

    name = "model-neuron"
    n_units = 1

    def __init__(
        self,
        image_size: int | tuple[int, int] = 64,
        orientation: float = 0.0,
        wavelength: float = 8.0,
        sigma: float | None = None,
        centre: Sequence[float] | None = None,
        baseline: float = 2.0,
        gain: float = 100.0,
        exponent: float = 2.0,
        c50: float | None = None,
    ):
        self.image_size = size2(image_size, "subject.image_size")
        self.orientation = number(orientation, "subject.orientation")
        self.wavelength = positive(wavelength, "subject.wavelength")
        self.sigma = 0.5 * self.wavelength if sigma is None else positive(sigma, "subject.sigma")
        if centre is None:
            h, w = self.image_size
            self.centre = ((h - 1) / 2.0, (w - 1) / 2.0)
        else:
            if not isinstance(centre, (list, tuple)) or len(centre) != 2:
                raise ConfigError("subject.centre", f"bad value {centre!r}", "[row, col] in pixels")
            self.centre = (number(centre[0], "subject.centre"), number(centre[1], "subject.centre"))
        self.baseline = positive(baseline, "subject.baseline", allow_zero=True)
        self.gain = positive(gain, "subject.gain")
        self.exponent = positive(exponent, "subject.exponent")
        self.g0, self.g90 = self._pair(self.centre)
        self._setup()
        self.filters = np.ascontiguousarray(self._filters())  # (F, H, W) float64
        self._fmat = self.filters.reshape(len(self.filters), -1)
        self.c50 = float(self.drive(self.matched_image(DEFAULT_C50_CONTRAST))[0]) if c50 is None else positive(c50, "subject.c50")

    # -- subclass hooks
    def _setup(self) -> None:
        """Extra construction before the filters are built (pooled and mixed units use it)."""

    def _filters(self) -> np.ndarray:
        return np.stack([self.g0, self.g90])

    def drive_from_outputs(self, p: np.ndarray) -> np.ndarray:
        """(B, F) filter outputs -> (B,) drive u."""
        raise NotImplementedError

    def matched_image(self, contrast: float = 1.0) -> np.ndarray:
        """The image used to calibrate c50 (see the module docstring), float32 (H, W, 3)."""
        return _complex_mei(self.g0, self.g90, contrast)[0]

    # -- shared
    def _pair(self, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        return gabor_pair(self.image_size, centre, self.orientation, self.wavelength, self.sigma)

    def _dx(self, images: np.ndarray) -> np.ndarray:
        x = as_image_batch(images)
        if x.shape[1:3] != self.image_size:
            raise ConfigError(
                "subject.image_size",
                f"images are {x.shape[1]}x{x.shape[2]} but the subject was built for "
                f"{self.image_size[0]}x{self.image_size[1]}",
                f"{x.shape[1]} (set subject.image_size to the generator's image size)",
            )
        return grey(x) - 0.5

    def filter_outputs(self, images: np.ndarray) -> np.ndarray:
        """filters . dx for each image: (B, F) float64."""
        dx = self._dx(images)
        return dx.reshape(dx.shape[0], -1) @ self._fmat.T

    def drive(self, images: np.ndarray) -> np.ndarray:
        """(B,) drive u (before the Naka-Rushton nonlinearity)."""
        return self.drive_from_outputs(self.filter_outputs(images))

    def rate_from_drive(self, u: np.ndarray) -> np.ndarray:
        return naka_rushton(u, self.baseline, self.gain, self.exponent, self.c50)

    def rate(self, images: np.ndarray) -> np.ndarray:
        return self.rate_from_drive(self.drive(images))[:, None]


def _complex_mei(g0: np.ndarray, g90: np.ndarray, contrast: float) -> tuple[np.ndarray, float]:
    """Most exciting image of (g0.dx)^2 + (g90.dx)^2 over |dx| <= contrast/2, and its drive.

    The drive is max over phase phi of (g_phi . dx)^2, and max over the box of g_phi . dx is attained at
    dx = (contrast/2) sign(g_phi), so the MEI is a binarised Gabor at the phase maximising ||g_phi||_1. That
    phase is found on a 0.25-degree grid, then polished by the fixed point phi <- atan2(s.g90, s.g0),
    s = sign(g_phi), which cannot decrease ||g_phi||_1.
    """
    a, b = g0.ravel(), g90.ravel()
    phis = np.deg2rad(np.arange(0.0, 180.0, 0.25))
    l1 = np.abs(np.cos(phis)[:, None] * a[None] + np.sin(phis)[:, None] * b[None]).sum(axis=1)
    phi = phis[int(np.argmax(l1))]
    s = np.sign(np.cos(phi) * a + np.sin(phi) * b)
    for _ in range(100):
        phi = np.arctan2(s @ b, s @ a)
        s_new = np.sign(np.cos(phi) * a + np.sin(phi) * b)
        if np.array_equal(s_new, s):
            break
        s = s_new
    half = 0.5 * float(contrast)
    drive = half**2 * ((s @ a) ** 2 + (s @ b) ** 2)
    return to_rgb(0.5 + half * s.reshape(g0.shape)), float(drive)


class ComplexCell(ModelNeuron):
    """Phase-invariant energy unit: u = (g0.dx)^2 + (g90.dx)^2.

    >>> import numpy as np
    >>> cell = ComplexCell(image_size=64, orientation=0.0, wavelength=8.0)
    >>> round(float(cell.rate(cell.preferred_image(0.2)[None])[0, 0]), 6)   # half-max by construction
    52.0
    >>> counts = cell.counts(cell.preferred_image(1.0)[None], 0.2, np.random.default_rng(0))
    >>> counts.shape, counts.dtype
    ((1, 1), dtype('int64'))
    """

    name = "complex-cell"

    def drive_from_outputs(self, p: np.ndarray) -> np.ndarray:
        return p[:, 0] ** 2 + p[:, 1] ** 2

    def preferred_image(self, contrast: float = 1.0) -> np.ndarray:
        """Exact most exciting image among images within 0.5 +- contrast/2 (contrast 1: within [0, 1])."""
        return _complex_mei(self.g0, self.g90, contrast)[0]


class SimpleCell(ModelNeuron):
    """Phase-selective control: u = max(g0.dx, 0)^2."""

    name = "simple-cell"

    def _filters(self) -> np.ndarray:
        return self.g0[None]

    def drive_from_outputs(self, p: np.ndarray) -> np.ndarray:
        return np.maximum(p[:, 0], 0.0) ** 2

    def preferred_image(self, contrast: float = 1.0) -> np.ndarray:
        """Exact most exciting image within 0.5 +- contrast/2: 0.5 + contrast/2 * sign(g0)."""
        return to_rgb(0.5 + 0.5 * float(contrast) * np.sign(self.g0))

    def matched_image(self, contrast: float = 1.0) -> np.ndarray:
        return self.preferred_image(contrast)


class PooledUnit(ModelNeuron):
    """Translation-invariant unit: a soft maximum of quadrature-pair energies at 4 (grid=2) or 9 (grid=3)
    positions spaced ``spacing`` pixels apart (default one wavelength) around ``centre``.

    u = T log mean_k exp(E_k / T) with T = temperature * E_half, E_half the centre pair's energy for its MEI
    pattern at 50% contrast. Small temperatures approach max_k E_k (minus T log K when one pair dominates).
    """

    name = "pooled-unit"

    def __init__(self, *args: Any, grid: int = 3, spacing: float | None = None, temperature: float = 0.05,
                 **kwargs: Any):
        if grid not in (2, 3) or isinstance(grid, bool):
            raise ConfigError("subject.grid", f"bad value {grid!r}", [2, 3])
        self.grid = int(grid)
        self._spacing = spacing
        self.temperature = positive(temperature, "subject.temperature")
        super().__init__(*args, **kwargs)

    def _setup(self) -> None:
        self.spacing = self.wavelength if self._spacing is None else positive(self._spacing, "subject.spacing")
        steps = (np.arange(self.grid) - (self.grid - 1) / 2.0) * self.spacing
        self.shifts = [(float(dy), float(dx)) for dy in steps for dx in steps]
        self.pairs = [self._pair((self.centre[0] + dy, self.centre[1] + dx)) for dy, dx in self.shifts]
        self._temp = self.temperature * _complex_mei(self.g0, self.g90, 0.5)[1]

    def _filters(self) -> np.ndarray:
        return np.stack([f for pair in self.pairs for f in pair])

    def energies_from_outputs(self, p: np.ndarray) -> np.ndarray:
        """(B, 2K) filter outputs -> (B, K) pair energies."""
        return p[:, 0::2] ** 2 + p[:, 1::2] ** 2

    def drive_from_outputs(self, p: np.ndarray) -> np.ndarray:
        e = self.energies_from_outputs(p) / self._temp
        m = e.max(axis=1, keepdims=True)
        return self._temp * (m[:, 0] + np.log(np.exp(e - m).mean(axis=1)))


class MixedUnit(ModelNeuron):
    """Energy plus a phase-selective part: u = (g0.dx)^2 + (g90.dx)^2 + alpha * max(g0.dx, 0)^2."""

    name = "mixed-unit"

    def __init__(self, *args: Any, alpha: float = 1.0, **kwargs: Any):
        self.alpha = positive(alpha, "subject.alpha", allow_zero=True)
        super().__init__(*args, **kwargs)

    def drive_from_outputs(self, p: np.ndarray) -> np.ndarray:
        return p[:, 0] ** 2 + p[:, 1] ** 2 + self.alpha * np.maximum(p[:, 0], 0.0) ** 2

    def matched_image(self, contrast: float = 1.0) -> np.ndarray:
        """0.5 + contrast/2 * sign(g0): drives both the energy and the rectified even part."""
        return to_rgb(0.5 + 0.5 * float(contrast) * np.sign(self.g0))


def _model_signature(cls: type) -> None:
    """Give subclasses that take *args/**kwargs an explicit signature (make_subject checks parameter names)."""
    import inspect

    base = list(inspect.signature(ModelNeuron.__init__).parameters.values())
    own = [p for p in inspect.signature(cls.__init__).parameters.values() if p.kind == p.KEYWORD_ONLY]
    cls.__init__.__signature__ = inspect.Signature(base + own)


_model_signature(PooledUnit)
_model_signature(MixedUnit)


MODEL_NEURONS: dict[str, type[Subject]] = {
    "complex-cell": ComplexCell,
    "simple-cell": SimpleCell,
    "pooled-unit": PooledUnit,
    "mixed-unit": MixedUnit,
}


def make_model_neuron(name: str, **params: Any) -> Subject:
    """Build a registered model neuron, or with ``name = "python"`` the subject a user's own factory returns
    (snslab_common.pyfactory); unknown names or parameters -> ConfigError ("subject[.param]")."""
    if name == "python":
        from snslab_common.pyfactory import make_python_subject

        return make_python_subject(**params)
    return make_from_registry("subject", {**MODEL_NEURONS, "python": Subject}, name, params)
