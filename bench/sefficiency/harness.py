"""One ask/tell loop for every method: presentations, Poisson counts, budget, checkpoints and scores.

Each generation presents the method's candidates plus the reference image ``REFERENCE_SHOWS`` times; all of
them count toward the budget. At each checkpoint N the state after the last generation that fits within N
is scored on noise-free values: "found" = every candidate presented so far, "reported" = the candidates
the method itself reports as its front; plus the selected image's retention and stretch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .fronts import Instance
from .methods import REFERENCE_SHOWS, Method

CHECKPOINTS = (1000, 3000, 10000)


@dataclass
class Checkpoint:
    budget: int
    presentations: int
    hv_found: float
    hv_reported: float
    retention: float  # lambda / lambda_ref of the selected image
    stretch: float  # invariance: f1 / exact best f1 at 0.9 retention; adversarial: exact least f1 for the
    # selected image's f2 / its f1 (1 = on the exact front)
    f1_sel: float
    f2_sel: float


@dataclass
class RunResult:
    method: str
    instance: str
    window_s: float
    seed: int
    checkpoints: list[Checkpoint] = field(default_factory=list)
    opt_seconds_per_generation: float = 0.0
    generations: int = 0
    stopped_early: bool = False


def run(method: Method, inst: Instance, window_s: float, seed: int, checkpoints=CHECKPOINTS) -> RunResult:
    """Drive ``method`` on ``inst`` with Poisson noise of window ``window_s`` until the last checkpoint."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))  # presentation noise, paired by seed
    res = RunResult(method.name, inst.name, window_s, seed)
    f1_all: list[np.ndarray] = []
    f2_all: list[np.ndarray] = []
    lam_all: list[np.ndarray] = []
    used = 0
    opt_time = 0.0
    pending = list(checkpoints)
    while pending:
        if method.done:
            codes = None
        else:
            t0 = time.perf_counter()
            codes = method.ask()
            opt_time += time.perf_counter() - t0
        size = None if codes is None else len(codes) + REFERENCE_SHOWS
        while pending and (codes is None or used + size > pending[0]):
            res.checkpoints.append(_score(method, inst, pending.pop(0), used, f1_all, f2_all, lam_all))
        if not pending:
            break
        lam = inst.unit.rate(codes)
        counts = rng.poisson(lam * window_s)
        ref_counts = rng.poisson(inst.lam_ref * window_s, REFERENCE_SHOWS)
        t0 = time.perf_counter()
        method.tell(counts.astype(np.float64), ref_counts.astype(np.float64))
        opt_time += time.perf_counter() - t0
        f1, f2 = inst.objectives(codes, lam)
        f1_all.append(f1)
        f2_all.append(f2)
        lam_all.append(lam)
        used += size
        res.generations += 1
    res.opt_seconds_per_generation = opt_time / max(res.generations, 1)
    res.stopped_early = bool(method.done)
    return res


def _score(method, inst: Instance, budget, used, f1_all, f2_all, lam_all) -> Checkpoint:
    if not f1_all:
        return Checkpoint(budget, used, 0.0, 0.0, np.nan, np.nan, np.nan, np.nan)
    f1 = np.concatenate(f1_all)
    f2 = np.concatenate(f2_all)
    front, selected = method.report()
    hv_found = inst.hv_ratio(f1, f2)
    hv_rep = inst.hv_ratio(f1[front], f2[front])
    s1, s2 = float(f1[selected]), float(f2[selected])
    retention = float(np.concatenate(lam_all)[selected] / inst.lam_ref)
    if inst.probe == "invariance":
        stretch = s1 / inst.front.best_stretch(0.1)
    else:
        best = inst.front.least_stretch(s2)
        stretch = best / s1 if s1 > 0 else (1.0 if best == 0 else 0.0)
    return Checkpoint(budget, used, hv_found, hv_rep, retention, stretch, s1, s2)

