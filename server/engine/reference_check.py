"""Is the reference worth probing? Its rate re-measured with fresh presentations, against the blank screen.

The maximize run's best image is the maximum of noisy measurements, so its measured rate is biased upwards
(a lucky count), most of all when the run never left baseline. Before a probe starts, the reference and a
blank (mean-grey) screen are shown ``repeats`` times each; the probe goes ahead only if the reference's mean
rate is at least ``min_ratio`` times the blank's and ``min_z`` standard errors above it. Otherwise
``ReferenceAtBaseline`` stops the run with one line saying so and what to change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from snslab_common.errors import SnslabError


class ReferenceAtBaseline(SnslabError):
    """The reference does not clearly drive the unit above its baseline: a probe of it means nothing."""


@dataclass
class ReferenceCheck:
    reference_rate_hz: float
    reference_se_hz: float
    baseline_rate_hz: float
    baseline_se_hz: float
    presentations: int  # of each image
    ratio: float
    z: float
    min_ratio: float
    min_z: float
    passed: bool

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}

    def message(self, source: str = "maximize") -> str:
        hint = {"maximize": "the maximize run did not leave baseline: give it more generations ([reference] "
                            "generations) or larger steps ([maximize.optimizer] sigma0)",
                "maximize-session": "the maximize session did not leave baseline: give it more generations "
                                    "(generations) or larger steps ([optimizer] sigma0)"}.get(
            source, "choose a reference image that drives the unit")
        return (f"reference: re-measured rate {self.reference_rate_hz:.1f} +- {self.reference_se_hz:.1f} Hz over "
                f"{self.presentations} fresh presentations is not clearly above the blank screen's "
                f"{self.baseline_rate_hz:.1f} +- {self.baseline_se_hz:.1f} Hz (ratio {self.ratio:.2f}, needs >= "
                f"{self.min_ratio:g}; {self.z:.1f} standard errors, needs >= {self.min_z:g}); {hint}")


def judge_reference(reference_rates: np.ndarray, baseline_rates: np.ndarray, *, min_ratio: float = 3.0,
                    min_z: float = 3.0) -> ReferenceCheck:
    """From per-presentation rates of the reference and of the blank (each (k,), mean over units)."""
    r = np.asarray(reference_rates, dtype=np.float64).ravel()
    b = np.asarray(baseline_rates, dtype=np.float64).ravel()
    rm, bm = float(r.mean()), float(b.mean())
    rse = float(r.std(ddof=1) / np.sqrt(len(r))) if len(r) > 1 else 0.0
    bse = float(b.std(ddof=1) / np.sqrt(len(b))) if len(b) > 1 else 0.0
    se = np.hypot(rse, bse)
    diff = rm - bm
    z = diff / se if se > 0 else (np.inf if diff > 0 else (0.0 if diff == 0 else -np.inf))
    ratio = rm / bm if bm > 0 else (np.inf if rm > 0 else 0.0)
    passed = bool(ratio >= min_ratio and z >= min_z)
    return ReferenceCheck(rm, rse, bm, bse, len(r), float(ratio), float(z), float(min_ratio), float(min_z), passed)
