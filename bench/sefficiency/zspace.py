"""The benchmark's image space, worked in DCT coefficients.

x = 0.5 + s W z on a 64x64 grey image (n = 4096) with W the orthonormal 2-D DCT basis, z kept in the ball
||z|| <= R by radial projection. Because W is orthonormal the pixel stretch of a code is s ||z - z_ref||
and a filter g acts as g . (x - 0.5) = s (W^T g) . z, so everything the benchmark scores is computed on
codes without rendering. The engine's DCTGenerator renders the same images (for the snslab path and
plots); ``scale`` is chosen so that no pixel ever clips inside the ball, which keeps the maths exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from snslab_common.gabor import gabor_pair
from server.engine.generators import DCTGenerator


@dataclass
class Space:
    side: int = 64
    radius: float = 64.0
    generator: DCTGenerator = field(init=False, repr=False)

    def __post_init__(self):
        # |(W z)_pixel| <= ||z|| (rows of W have unit norm), so s * R < 0.5 never clips.
        self.scale = 0.49 / self.radius
        self.n = self.side * self.side
        self.generator = DCTGenerator(
            code_size=self.n, image_size=self.side, channels=1, scale=self.scale, ball_radius=self.radius
        )

    def project(self, codes: np.ndarray) -> np.ndarray:
        """Radial projection into the ball (the generator's own rule)."""
        return self.generator.project(codes)

    def coefficients(self, grey: np.ndarray) -> np.ndarray:
        """W^T g for (B, H, W) or (H, W) grey pixel arrays -> (B, n)."""
        g = np.asarray(grey, dtype=np.float64)
        if g.ndim == 2:
            g = g[None]
        return self.generator.coefficients(g[..., None])

    def gabor_pair_codes(self, centre=None, orientation=45.0, wavelength=8.0, sigma=4.0) -> np.ndarray:
        """A quadrature Gabor pair as two orthonormal code-space vectors (2, n)."""
        g0, g90 = gabor_pair(self.side, centre=centre, orientation=orientation, wavelength=wavelength, sigma=sigma)
        q = self.coefficients(np.stack([g0, g90]))
        return _orthonormal_rows(q)

    def random_orthogonal_direction(self, span: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A unit code orthogonal to the rows of ``span`` (orthonormal rows)."""
        v = rng.standard_normal(self.n)
        v -= span.T @ (span @ v)
        return v / np.linalg.norm(v)


def _orthonormal_rows(a: np.ndarray) -> np.ndarray:
    """Gram-Schmidt (QR) on rows, keeping each row's direction as close as possible to the original."""
    q, r = np.linalg.qr(a.T)
    return (q * np.sign(np.diag(r))).T


def symmetric_orthonormal(a: np.ndarray) -> np.ndarray:
    """Loewdin orthonormalisation of rows: the orthonormal set closest to ``a`` (treats every row alike)."""
    u, _, vt = np.linalg.svd(a, full_matrices=False)
    return u @ vt
