"""Image and value checks shared by the engine and the model neurons (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from snslab_common.errors import ConfigError


def as_image_batch(images: np.ndarray, field: str = "images") -> np.ndarray:
    """(B, H, W, 3) or a single (H, W, 3) image -> float (B, H, W, 3) array (no copy when possible)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ConfigError(field, f"expected images of shape (B, H, W, 3), got {images.shape}", "(B, H, W, 3)")
    if not np.issubdtype(images.dtype, np.floating):
        images = images.astype(np.float32)
    return images


def grey(images: np.ndarray) -> np.ndarray:
    """Mean of the RGB channels: (B, H, W, 3) -> (B, H, W) float64 (the model neurons' luminance)."""
    return np.asarray(images, dtype=np.float64).mean(axis=-1)


def size2(value: Any, field: str) -> tuple[int, int]:
    """An image size given as an int (square) or (H, W) -> (H, W) of positive ints, else ConfigError."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        h = w = int(value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        h, w = int(value[0]), int(value[1])
    else:
        raise ConfigError(field, f"bad image size {value!r}", "a positive int or [H, W]")
    if h < 1 or w < 1:
        raise ConfigError(field, f"bad image size {value!r}", "a positive int or [H, W]")
    return h, w


def positive(value: Any, field: str, *, integer: bool = False, allow_zero: bool = False) -> Any:
    """Check a positive (or non-negative) number and return it as int/float, else ConfigError."""
    ok_types = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, ok_types) or not np.isfinite(value):
        raise ConfigError(field, f"bad value {value!r}", "a non-negative number" if allow_zero else "a positive number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(field, f"bad value {value!r}", "a non-negative number" if allow_zero else "a positive number")
    return int(value) if integer else float(value)


def number(value: Any, field: str) -> float:
    """A finite real number (not a bool) as float, else ConfigError."""
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not numeric or not np.isfinite(value):
        raise ConfigError(field, f"bad value {value!r}", "a finite number")
    return float(value)
