"""Can this server keep up with a live session? A short timed dry run at session creation.

Per generation the server renders the new candidates and measures them in every stage (the subject is the
animal). That must fit in the time the display needs to show the generation (presentations x (on + off));
otherwise the display waits at every generation boundary and the session crawls. The dry run times a few
images through the real generator and stages (after an untimed warm-up) and scales to the generation's
size; results are cached per configuration shape, so creating many sessions costs one dry run.

Verdicts: ``ok``; ``slow`` (compute exceeds what the lead-in repeats hide: the display idles at each
boundary, a warning); ``too-slow`` (compute exceeds the whole generation's display time: refused unless the
operator asks to create it anyway).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .engine.far_reach import far_candidates

DRY_RUN_IMAGES = 4  # images per timed call: enough to amortise per-call overhead, short on a CPU

_cache: dict[str, dict[str, float]] = {}
_lock = threading.Lock()


@dataclass
class Feasibility:
    """The dry run's estimate against the display's time per generation."""

    verdict: str  # ok | slow | too-slow
    compute_s: float  # rendering + stages per generation (estimated)
    display_s: float  # presentations x (on + off)
    lead_in_s: float  # what the lead-in repeats hide at each boundary
    presentations: int
    parts: dict[str, float] = field(default_factory=dict)  # seconds per generation of each part
    device: str = "cpu"

    def message(self) -> str:
        """One line naming the heaviest part, the times, and the ways out."""
        heavy = max(self.parts, key=self.parts.get)
        parts = ", ".join(f"{k} {v:.3g} s" for k, v in sorted(self.parts.items(), key=lambda kv: -kv[1]))
        if self.verdict == "too-slow":
            head = (f"probe.stages: this server ({self.device}) needs ~{self.compute_s:.3g} s per generation "
                    f"({parts}) but the display shows a generation in {self.display_s:.3g} s "
                    f"({self.presentations} presentations x (on + off)), so the session cannot keep up")
        else:
            head = (f"probe.stages: this server ({self.device}) needs ~{self.compute_s:.3g} s per generation "
                    f"({parts}), more than the {self.lead_in_s:.3g} s the lead-in hides: the display will "
                    f"wait ~{self.compute_s - self.lead_in_s:.3g} s at each generation boundary")
        return (f"{head}; use a lighter stage than {heavy} (an earlier layer, pixel or gabor-energy), fewer "
                "candidates, longer on/off times, or a server with a GPU (device = 'auto' uses it)")


def _key(probe, population: int) -> str:
    gen = {"name": probe.generator.name, **probe.generator.params}
    stages = [{"name": s.name, "label": s.key, **s.params} for s in probe.stages] if probe.mode != "maximize" else []
    return json.dumps({"generator": gen, "stages": stages, "n": population}, sort_keys=True, default=str)


def _timed(fn) -> float:
    fn()  # warm-up, untimed (lazy init, allocator, cuDNN autotuning)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(probe, generator, stages: dict, n_images: int) -> dict[str, float]:
    """Seconds per generation of ``n_images`` new candidates for the generator and each stage (cached)."""
    key = _key(probe, n_images)
    with _lock:
        if key in _cache:
            return dict(_cache[key])
    k = min(DRY_RUN_IMAGES, n_images)
    rng = np.random.default_rng(0)
    codes = generator.project(rng.normal(0.0, 1.0, (k, generator.code_size)))
    images = generator.render(codes)
    scale = n_images / k
    parts = {f"generator {generator.name}": _timed(lambda: generator.render(codes)) * scale}
    for name, stage in stages.items():
        parts[f"stage {name!r}"] = _timed(lambda: stage.features(images)) * scale
    with _lock:
        _cache[key] = dict(parts)
    return parts


def check(probe, generator, stages: dict, *, on_ms: float, off_ms: float) -> Feasibility:
    """Estimate the compute per generation of ``probe`` on this machine and compare with the display time."""
    new = probe.population + (probe.retests if probe.confirm and probe.mode != "maximize" else 0)
    new += far_candidates(probe)
    refs = probe.reference_repeats if probe.mode != "maximize" else 0
    presentations = new + refs
    per = (on_ms + off_ms) / 1000.0
    display_s = presentations * per
    lead_in_s = (probe.lead_in if refs else 0) * per
    parts = measure(probe, generator, stages if probe.mode != "maximize" else {},
                    probe.population + far_candidates(probe))
    compute = sum(parts.values())
    verdict = "too-slow" if compute > display_s else "slow" if compute > lead_in_s and refs else "ok"
    devices = {getattr(o, "device", "cpu") for o in [generator, *stages.values()]}
    return Feasibility(verdict, compute, display_s, lead_in_s, presentations, parts,
                       "cuda" if "cuda" in devices else "cpu")
