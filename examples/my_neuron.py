"""Your own model neuron for snslab: a red-green colour-opponent complex cell.

Name it in a probe config (examples/invariance-colour-opponent.toml):

    [subject]
    name = "python"
    factory = "examples.my_neuron:make"   # package.module:callable, importable from where you run snslab
    orientation = 45.0                    # every other key is passed to make(...)

The factory returns a ``Subject``: anything with ``rate(images) -> (B, U)`` expected firing rates in
spikes/s (noise-free; the in-silico rig and the simulated bridge add Poisson spikes), for ``images`` a
(B, H, W, 3) float32 batch in [0, 1] as the display shows them. ``n_units`` says how many units (default 1).
If ``make`` takes ``image_size`` it is given the generator's image size. A torch module mapping a
(B, 3, H, W) batch to (B, U) rates works as well. Outputs and stored sessions record the factory string and
its parameters, never the object, so keep everything that defines the neuron in those parameters.
"""

from __future__ import annotations

import numpy as np

from snslab_common.gabor import gabor_pair
from snslab_common.neurons import Subject, naka_rushton


class ColourOpponentCell(Subject):
    """Energy of quadrature Gabor filters applied to the red-minus-green signal: blind to luminance."""

    name = "colour-opponent"
    n_units = 1

    def __init__(self, image_size: int = 32, orientation: float = 45.0, wavelength: float = 8.0,
                 baseline: float = 2.0, gain: float = 100.0, c50: float = 6.5):
        size = (int(image_size), int(image_size))
        centre = ((size[0] - 1) / 2.0, (size[1] - 1) / 2.0)
        self.g0, self.g90 = gabor_pair(size, centre, float(orientation), float(wavelength), 0.5 * float(wavelength))
        self.baseline, self.gain, self.c50 = float(baseline), float(gain), float(c50)

    def rate(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.float64)
        rg = (x[..., 0] - x[..., 1]).reshape(len(x), -1)  # red minus green: 0 for every grey image
        u = (rg @ self.g0.ravel()) ** 2 + (rg @ self.g90.ravel()) ** 2
        return naka_rushton(u, self.baseline, self.gain, 2.0, self.c50)[:, None]


def make(image_size: int = 32, orientation: float = 45.0, wavelength: float = 8.0, c50: float = 6.5) -> Subject:
    """c50 6.5: half-max for a red-green grating of +-0.2 (the drive of +-1 is about 164 at 32 px)."""
    return ColourOpponentCell(image_size, orientation, wavelength, c50=c50)
