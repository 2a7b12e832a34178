"""Upper bounds on what one live session may ask of the server, checked when it is created, so a typo (or
a hostile request) cannot make the server allocate gigabytes or run for years. Each bound is documented
(README, "Limits") and every refusal is one line naming the field and what is allowed."""

from __future__ import annotations

import math
import os

from .engine.far_reach import far_candidates

MAX_IMAGE_SIDE = 512  # px, generator.image_size
MAX_CODE_SIZE = 65_536  # generator.code_size
MAX_CHANNELS = 3
MAX_UNITS = 1024  # units per session
MAX_WINDOW_MS = 2000.0  # response window end
MEMORY_SHARE = 0.5  # a generation may use at most this share of the machine's available memory


class LimitError(ValueError):
    """A request over a documented bound; the message is one line naming the field."""


def _positive_int(params: dict, key: str, limit: int) -> list[int]:
    v = params.get(key)
    if v is None:
        return []
    values = list(v) if isinstance(v, (list, tuple)) else [v]
    for x in values:
        if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= limit:
            raise LimitError(f"probe.generator.{key}: {v!r} (allowed: whole numbers 1..{limit})")
    return values


def available_memory() -> int:
    """Bytes of memory the machine has free now (physical pages available)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux: no check
        return 1 << 62


def generation_bytes(probe) -> int:
    """A rough upper estimate of the memory one generation needs: rendered images (float32, a few copies
    through render, stages and PNG encoding), the codes, and a full-covariance optimizer's n x n matrices."""
    params = probe.generator.params
    side = params.get("image_size", 64)
    h, w = (side, side) if isinstance(side, int) else tuple(side)[:2]
    code = int(params.get("code_size", h * w * 3))
    n = probe.population + probe.retests + probe.reference_repeats + far_candidates(probe)
    images = n * h * w * 3 * 4 * 8
    codes = probe.population * code * 8 * 4
    covariance = code * code * 8 * 3 if probe.optimizer.name == "cma" else code * 8 * 8
    return images + codes + covariance


def check_session(spec, probe) -> None:
    """Refuse a live session over any bound (``spec``: SessionCreate, ``probe``: its parsed ProbeConfig)."""
    params = probe.generator.params
    _positive_int(params, "image_size", MAX_IMAGE_SIDE)
    _positive_int(params, "code_size", MAX_CODE_SIZE)
    _positive_int(params, "channels", MAX_CHANNELS)
    if len(spec.units) > MAX_UNITS:
        raise LimitError(f"units: {len(spec.units)} units (allowed: 1..{MAX_UNITS})")
    need, have = generation_bytes(probe), available_memory()
    if need > MEMORY_SHARE * have:
        raise LimitError(f"probe: one generation needs about {need / 2**30:.1f} GiB, more than "
                         f"{MEMORY_SHARE:.0%} of this machine's available memory ({have / 2**30:.1f} GiB); "
                         "lower generator.image_size, generator.code_size or population")
    for name in ("on_ms", "off_ms"):
        if not math.isfinite(getattr(spec, name)):
            raise LimitError(f"{name}: not a finite number")
