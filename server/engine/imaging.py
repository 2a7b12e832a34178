"""Helpers shared by generators and stages: resizing and torch weights (image checks: snslab_common.imaging).

numpy only; the one torch helper (``load_state_dict_file``) imports torch when called, so numpy-only users of
the engine never import torch.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from snslab_common.errors import ConfigError
from snslab_common.imaging import size2


# ------------------------------------------------------------------------------------------------- resizing
def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source pixels i0, i1 and weight of i1 for each output pixel: half-pixel centres, like torch's
    ``interpolate(mode="bilinear", align_corners=False)`` (negative source coordinates clamp to 0)."""
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, None)
    i0 = np.minimum(np.floor(x).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, x - i0


@lru_cache(maxsize=64)
def _resize_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """(n_out, n_in) interpolation weights. With antialias (and n_out < n_in) the triangle filter is widened
    by the scale factor and renormalised, as torch ``antialias=True`` and PIL's bilinear do."""
    scale = n_in / n_out
    if antialias and scale > 1.0:
        centres = (np.arange(n_out) + 0.5) * scale - 0.5
        w = np.clip(1.0 - np.abs(np.arange(n_in)[None, :] - centres[:, None]) / scale, 0.0, None)
        return w / w.sum(axis=1, keepdims=True)
    m = np.zeros((n_out, n_in))
    i0, i1, frac = _bilinear_taps(n_in, n_out)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - frac)
    np.add.at(m, (rows, i1), frac)
    return m


def resize(images: np.ndarray, size: int | tuple[int, int], antialias: bool = False) -> np.ndarray:
    """Bilinear resize of (B, H, W, C) images to ``size`` (int or (H, W)).

    ``antialias=False`` reproduces ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``,
    which is what the reference uses for its 224x224 pixel stage (two-tap gathers, memory bound);
    ``antialias=True`` matches torch's ``antialias=True`` (dense separable matrices, for shrinking).
    """
    images = np.asarray(images)
    h_out, w_out = size2(size, "size")
    b, h_in, w_in, c = images.shape
    if (h_out, w_out) == (h_in, w_in):
        return images
    dtype = images.dtype if np.issubdtype(images.dtype, np.floating) else np.float32
    x = images.astype(dtype, copy=False)
    if antialias and (h_out < h_in or w_out < w_in):
        rh = _resize_matrix(h_in, h_out, True).astype(dtype)
        rw = _resize_matrix(w_in, w_out, True).astype(dtype)
        out = np.tensordot(x, rh, axes=([1], [1]))  # (B, W, C, H')
        out = np.tensordot(out, rw, axes=([1], [1]))  # (B, C, H', W')
        return np.ascontiguousarray(out.transpose(0, 2, 3, 1))
    for axis, n_in, n_out in ((1, h_in, h_out), (2, w_in, w_out)):
        if n_in == n_out:
            continue
        i0, i1, f = _bilinear_taps(n_in, n_out)
        shape = [1, 1, 1, 1]
        shape[axis] = n_out
        a, b = np.take(x, i0, axis=axis), np.take(x, i1, axis=axis)
        b -= a  # a + f (b - a), in place: the pass is memory bound
        b *= f.astype(dtype).reshape(shape)
        a += b
        x = a
    return x


# ------------------------------------------------------------------------------------------- torch weights
def load_state_dict_file(path: str | Path, field: str) -> dict:
    """Read a ``torch.save``d state_dict (tensors only, ``weights_only``) onto the CPU.

    Accepts a bare state_dict or a checkpoint dict holding one under "state_dict" / "model"; strips a
    DataParallel "module." prefix. A missing or unreadable file -> ConfigError(field, ...).
    """
    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(field, f"file not found: {path}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a weights file"
        raise ConfigError(field, f"cannot read weights from {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(torch.is_tensor(v) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ConfigError(field, f"{path} does not hold a state_dict of tensors")
    out = {}
    for k, v in obj.items():
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def check_state_dict(expected: Mapping[str, tuple], found: Mapping[str, Any], field: str) -> None:
    """ConfigError naming the first key that is missing, mis-shaped or unexpected (expected vs found shape)."""
    for key, shape in expected.items():
        if key not in found:
            raise ConfigError(field, f"missing key {key!r} (expected shape {tuple(shape)})")
        got = tuple(found[key].shape)
        if got != tuple(shape):
            raise ConfigError(field, f"key {key!r}: expected shape {tuple(shape)}, found {got}")
    for key in found:
        if key not in expected:
            raise ConfigError(field, f"unexpected key {key!r} (shape {tuple(found[key].shape)})")


def pick_device(device: str, field: str) -> str:
    """"cpu" | "cuda" | "auto" -> a torch device string (auto = cuda when present)."""
    if device not in ("cpu", "cuda", "auto"):
        raise ConfigError(field, f"unknown device {device!r}", ["auto", "cpu", "cuda"])
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(field, "CUDA requested but no CUDA device is available", ["auto", "cpu"])
    return device
