"""Affine controls: the reference's rotated, translated and shrunk copies of a reference image.

The reference (snslib metaexperiment.canonical) transforms a PIL image with torchvision's defaults: nearest
neighbour, rotation/scaling about (W/2, H/2), black fill, output the same size. This module reproduces that
geometry on float images (no 8-bit rounding) with numpy, following Pillow's arithmetic: each output pixel
centre (x + 0.5, y + 0.5) is mapped through the inverse transform and rounded down to a source pixel; anything
outside the image gets ``fill``. The controls match torchvision-on-PIL pixel for pixel (tested).

Controls, in order (labels in brackets):
- rotations 0, 45, 90, 135, 180 degrees counter-clockwise ["rotation:45"];
- translations by int(p * W) horizontally and int(p * H) vertically for p in 0, 5, 10, 25, 50 %: p = 0 once
  ["translation:0"], otherwise right, left, down, up ["translation:5:right"] (the reference averages the four);
- scalings 0.2, 0.4, 0.6, 0.8, 1.0 about the centre, padding with fill ["scale:0.2"].
"""

from __future__ import annotations

import math

import numpy as np

ROTATIONS = (0, 45, 90, 135, 180)
TRANSLATIONS = (0.0, 0.05, 0.1, 0.25, 0.5)
SCALES = (0.2, 0.4, 0.6, 0.8, 1.0)
_DIRECTIONS = (("right", 1, 0), ("left", -1, 0), ("down", 0, 1), ("up", 0, -1))


def _inverse_affine(image: np.ndarray, matrix: tuple[float, ...], fill: float) -> np.ndarray:
    """Pillow's nearest-neighbour Image.transform(AFFINE, matrix): out[y, x] = in[src(x, y)] or fill.

    Pillow has two code paths and both are reproduced exactly: pure scale/translation matrices
    (ImagingScaleAffine: float positions accumulated pixel by pixel from the first pixel centre, truncated),
    and everything else (affine_fixed: 16.16 fixed-point positions, floored).
    """
    h, w = image.shape[:2]
    a0, a1, a2, a3, a4, a5 = matrix
    if a1 == 0 and a3 == 0:
        # sequential sums, as in C (numpy's cumsum is sequential too, so boundary rounding matches)
        xs = np.cumsum(np.r_[a2 + a0 * 0.5, np.full(w - 1, a0)])
        ys = np.cumsum(np.r_[a5 + a4 * 0.5, np.full(h - 1, a4)])
        xi = np.where(xs < 0.0, -1, xs.astype(np.int64))  # Pillow's COORD(): negative -> -1, else truncate
        yi = np.where(ys < 0.0, -1, ys.astype(np.int64))
        xi, yi = np.broadcast_to(xi[None, :], (h, w)), np.broadcast_to(yi[:, None], (h, w))
    else:
        def fix(v: float) -> int:
            return math.floor(v * 65536.0 + 0.5)

        f0, f1, f3, f4 = fix(a0), fix(a1), fix(a3), fix(a4)
        f2, f5 = fix(a2 + a0 * 0.5 + a1 * 0.5), fix(a5 + a3 * 0.5 + a4 * 0.5)
        rows, cols = np.arange(h, dtype=np.int64)[:, None], np.arange(w, dtype=np.int64)[None, :]
        xi = (f2 + rows * f1 + cols * f0) >> 16
        yi = (f5 + rows * f4 + cols * f3) >> 16
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    out = np.full_like(image, fill)
    out[inside] = image[yi[inside], xi[inside]]
    return out


def rotate(image: np.ndarray, angle: float, fill: float = 0.0) -> np.ndarray:
    """Counter-clockwise rotation about the centre, same size, nearest neighbour (PIL Image.rotate)."""
    angle = angle % 360.0
    h, w = image.shape[:2]
    if angle == 0:
        return image.copy()
    if angle == 180:
        return np.ascontiguousarray(np.rot90(image, 2))
    if angle in (90, 270) and h == w:
        return np.ascontiguousarray(np.rot90(image, 1 if angle == 90 else 3))
    cx, cy = w / 2.0, h / 2.0
    t = -math.radians(angle)
    a, b, d, e = round(math.cos(t), 15), round(math.sin(t), 15), round(-math.sin(t), 15), round(math.cos(t), 15)
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    return _inverse_affine(image, (a, b, c, d, e, f), fill)


def _affine_matrix(w: int, h: int, translate: tuple[int, int], scale: float) -> tuple[float, ...]:
    """torchvision's inverse affine matrix for angle 0, no shear, centre (W/2, H/2) (the PIL path)."""
    cx, cy = w * 0.5, h * 0.5
    tx, ty = translate
    m = [1.0 / scale, 0.0, 0.0, 0.0, 1.0 / scale, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return tuple(m)


def translate(image: np.ndarray, dx: int, dy: int, fill: float = 0.0) -> np.ndarray:
    """Move the content dx pixels right and dy pixels down, filling the uncovered border."""
    h, w = image.shape[:2]
    return _inverse_affine(image, _affine_matrix(w, h, (dx, dy), 1.0), fill)


def shrink(image: np.ndarray, scale: float, fill: float = 0.0) -> np.ndarray:
    """Scale about the centre by ``scale`` (nearest neighbour), same output size, padding with fill."""
    if scale == 1.0:
        return image.copy()
    h, w = image.shape[:2]
    return _inverse_affine(image, _affine_matrix(w, h, (0, 0), float(scale)), fill)


def affine_controls(image: np.ndarray, fill: float = 0.0) -> list[tuple[str, np.ndarray]]:
    """The reference's 5 rotations, 17 translations and 5 scalings of one (H, W, C) or (H, W) image.

    >>> import numpy as np
    >>> img = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
    >>> controls = affine_controls(img, fill=0.0)
    >>> len(controls), controls[1][0], controls[10][0]
    (27, 'rotation:45', 'translation:10:right')
    >>> bool(np.array_equal(dict(controls)["rotation:180"], np.rot90(img, 2)))
    True
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"expected one (H, W, 3) image, got shape {img.shape}")
    h, w = img.shape[:2]
    fill_value = np.asarray(fill, dtype=img.dtype)
    out: list[tuple[str, np.ndarray]] = []
    for angle in ROTATIONS:
        out.append((f"rotation:{angle}", rotate(img, angle, fill_value)))
    for p in TRANSLATIONS:
        if p == 0:
            out.append(("translation:0", img.copy()))
            continue
        sx, sy = int(p * w), int(p * h)
        for name, ux, uy in _DIRECTIONS:
            out.append((f"translation:{p * 100:g}:{name}", translate(img, ux * sx, uy * sy, fill_value)))
    for s in SCALES:
        out.append((f"scale:{s:g}", shrink(img, s, fill_value)))
    return out
