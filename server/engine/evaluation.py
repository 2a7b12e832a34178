"""Noise-free evaluation of a probe's answer, as the paper reports it.

Pixel distances are normalised by max_pix_dist = ||max(ref, 1 - ref)||_2 (the largest possible distance
from the reference); retention is r(x) / r(ref) from the subject's noise-free rate. Affine controls are
the reference's rotations, translations and scalings of the reference image.
"""

from __future__ import annotations

import numpy as np

from .affine import affine_controls
from .base import Subject


def max_pixel_distance(reference: np.ndarray) -> float:
    ref = np.asarray(reference, dtype=np.float64)
    return float(np.linalg.norm(np.maximum(ref, 1.0 - ref)))


def pixel_distance(image: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(image, np.float64) - np.asarray(reference, np.float64)))


def retention_and_stretch(subject: Subject, reference: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: mean-over-units rate relative to the reference, and pixel distance / max_pix_dist."""
    images = np.asarray(images, dtype=np.float32)
    rates = subject.rate(np.concatenate([reference[None].astype(np.float32), images])).mean(axis=1)
    retention = rates[1:] / rates[0]
    d = np.linalg.norm((images.astype(np.float64) - reference[None]).reshape(len(images), -1), axis=1)
    return retention, d / max_pixel_distance(reference)


def affine_control_table(subject: Subject, reference: np.ndarray) -> list[dict]:
    labels, images = zip(*affine_controls(reference))
    retention, stretch = retention_and_stretch(subject, reference, np.stack(images))
    return [
        {"control": lab, "retention": float(r), "stretch": float(s)}
        for lab, r, s in zip(labels, retention, stretch)
    ]


def pink_noise_images(n: int, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Synthetic natural-like images (1/f amplitude spectrum, random phase), (n, H, W, 3) in [0, 1]."""
    h, w, _ = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))
    out = np.empty((n, h, w, 3), dtype=np.float32)
    for i in range(n):
        for c in range(3):
            spec = amp * np.exp(2j * np.pi * rng.random(amp.shape))
            img = np.fft.irfft2(spec, s=(h, w))
            img = (img - img.mean()) / (img.std() + 1e-12)
            out[i, :, :, c] = np.clip(0.5 + 0.15 * img, 0.0, 1.0)
    return out
