"""Quadrature Gabor pairs and gratings, shared by the Gabor-energy stage and the model neurons.

Geometry (all in pixels of the image the filter is applied to):
- ``centre`` = (row, col), default the image centre ((H-1)/2, (W-1)/2);
- ``orientation`` in degrees: the direction of the carrier's wave vector, counter-clockwise from the
  +column axis as the image is displayed (rows grow downwards). 0 deg = vertical stripes, 90 deg = horizontal;
- ``wavelength`` = carrier period; ``sigma`` = Gaussian envelope s.d. (default 0.5 * wavelength, a bandwidth
  of about 1.1 octaves, typical of V1 cells).

The pair is made zero-mean (Morlet-style: a multiple of the envelope is subtracted, so a uniform image gives
exactly 0), orthogonalised (g90 against g0) and unit-norm, so (g0 . x)^2 + (g90 . x)^2 is the squared length of
the projection of x onto an orthonormal plane: exactly invariant to rotations within it.
"""

from __future__ import annotations

import numpy as np

from snslab_common.imaging import size2


def _coords(shape: tuple[int, int], centre: tuple[float, float] | None, orientation: float):
    h, w = shape
    cy, cx = ((h - 1) / 2.0, (w - 1) / 2.0) if centre is None else (float(centre[0]), float(centre[1]))
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    x = cols - cx
    y = -(rows - cy)  # y up, so orientation is counter-clockwise as displayed
    theta = np.deg2rad(orientation)
    along = x * np.cos(theta) + y * np.sin(theta)  # coordinate along the wave vector
    return x, y, along


def gabor_pair(
    size: int | tuple[int, int],
    centre: tuple[float, float] | None = None,
    orientation: float = 0.0,
    wavelength: float = 8.0,
    sigma: float | None = None,
    zero_mean: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Even (cosine) and odd (sine) Gabor filters, float64 (H, W) each, unit norm, g0 . g90 = 0."""
    shape = size2(size, "size")
    sigma = 0.5 * wavelength if sigma is None else float(sigma)
    x, y, along = _coords(shape, centre, orientation)
    env = np.exp(-(x**2 + y**2) / (2.0 * sigma**2))
    phase = 2.0 * np.pi * along / wavelength
    g0 = env * np.cos(phase)
    g90 = env * np.sin(phase)
    if zero_mean:
        esum = env.sum()
        g0 = g0 - env * (g0.sum() / esum)
        g90 = g90 - env * (g90.sum() / esum)
    g0 /= np.linalg.norm(g0)
    g90 = g90 - g0 * np.vdot(g0, g90)
    g90 /= np.linalg.norm(g90)
    return g0, g90


def grating(
    size: int | tuple[int, int],
    orientation: float = 0.0,
    wavelength: float = 8.0,
    phase: float = 0.0,
    contrast: float = 1.0,
    centre: tuple[float, float] | None = None,
) -> np.ndarray:
    """Full-field sinusoidal grating 0.5 + 0.5*contrast*cos(2 pi along/wavelength + phase), float64 (H, W).

    With phase 0 it is in phase with ``gabor_pair(...)[0]`` for the same centre/orientation/wavelength.
    ``phase`` is in radians.
    """
    shape = size2(size, "size")
    _, _, along = _coords(shape, centre, orientation)
    return 0.5 + 0.5 * contrast * np.cos(2.0 * np.pi * along / wavelength + phase)


def to_rgb(grey_images: np.ndarray) -> np.ndarray:
    """(..., H, W) grey -> (..., H, W, 3) float32 RGB with equal channels."""
    g = np.asarray(grey_images, dtype=np.float32)
    return np.repeat(g[..., None], 3, axis=-1)
