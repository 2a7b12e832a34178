"""Is the neuron still there? The reference image is shown again in every generation; its response should
stay where it started. A sustained drop (or rise) of the reference response is the first sign that the
electrode is losing the unit's isolation, long before the probe's own numbers look odd.

    >>> t = HealthThresholds(window=4, drift=0.3, collapse=0.5)
    >>> verdict([10, 11, 9, 10, 10, 2, 1, 2, 1], t)["status"]
    'collapse'

For each unit: every reference response in the order shown, the running estimate after each one (mean of the
last ``window`` responses with its 95% interval), the estimate at the start (the first ``window``), and a
status: ``ok``, ``drift`` (the running estimate moved by more than ``drift`` of the start and its interval
excludes the start) or ``collapse`` (it fell below ``1 - collapse`` of the start, interval excluding it).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class HealthThresholds(BaseSettings):
    """When the dashboard and the API warn; set by $SNSLAB_NEURON_WINDOW, ..._DRIFT, ..._COLLAPSE or per
    request (query parameters of GET /api/sessions/{id}/neuron)."""

    model_config = SettingsConfigDict(env_prefix="SNSLAB_NEURON_", extra="ignore")

    window: int = Field(6, ge=2, le=200, description="reference responses in the running estimate (and in the start)")
    drift: float = Field(0.3, gt=0, le=10, description="warn when the estimate moved by more than this fraction of "
                         "the start (and its interval excludes the start)")
    collapse: float = Field(0.5, gt=0, lt=1, description="warn 'collapse' when the estimate fell below (1 - this) "
                            "of the start")


def estimate(values: Sequence[float]) -> dict[str, float] | None:
    """Mean with a 95% interval (normal approximation; the spread is at least Poisson's, so a run of equal
    counts does not claim certainty)."""
    n = len(values)
    if n == 0:
        return None
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    sd = math.sqrt(max(var, mean, 1.0 / n))  # Poisson floor: variance >= mean; never zero
    half = 1.96 * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def verdict(values: Sequence[float], t: HealthThresholds) -> dict[str, Any]:
    """Start estimate, running estimate and status of one unit's reference responses (oldest first)."""
    w = t.window
    initial = estimate(values[:w]) if len(values) >= w else None
    current = estimate(values[-w:]) if values else None
    status, message = "ok", None
    if len(values) < 2 * w:
        status = "warming-up"
    elif initial is not None and current is not None and initial["mean"] > 0:
        ratio = current["mean"] / initial["mean"]
        excluded = not (current["low"] <= initial["mean"] <= current["high"])
        if excluded and ratio < 1 - t.collapse:
            status = "collapse"
        elif excluded and abs(ratio - 1) > t.drift:
            status = "drift"
        if status != "ok":
            message = (f"reference response {'collapsed' if status == 'collapse' else 'drifted'} to "
                       f"{current['mean']:.2f} from {initial['mean']:.2f} at the start ({ratio:.0%}) "
                       f"over the last {w} repeats")
    return {"initial": initial, "estimate": current, "status": status, "message": message}


def neuron_health(refs, baseline: list[dict[str, Any]], unit_labels: list[str], t: HealthThresholds
                  ) -> dict[str, Any]:
    """The whole answer of GET .../neuron from the stored reference responses (dashboard_queries)."""
    units = []
    warnings = []
    for pos, label in enumerate(unit_labels):
        points = [(r.presentation_id, r.generation, r.counts[pos]) for r in refs if len(r.counts) > pos]
        values = [float(c) for _, _, c in points]
        running = [estimate(values[max(0, i + 1 - t.window): i + 1]) for i in range(len(values))]
        v = verdict(values, t)
        if v["message"]:
            warnings.append(f"unit {label}: {v['message']}")
        units.append({
            "position": pos, "label": label,
            "references": [{"presentation_id": p, "generation": g, "response": c, "mean": e["mean"],
                            "low": e["low"], "high": e["high"]} for (p, g, c), e in zip(points, running)],
            "baseline_hz": [{"generation": b["generation"], "rate_hz": b["rate_hz"][pos]} for b in baseline
                            if pos < len(b["rate_hz"]) and b["rate_hz"][pos] is not None],
            **v,
        })
    return {
        "thresholds": t.model_dump(),
        "units": units,
        "status": next((s for s in ("collapse", "drift") if any(u["status"] == s for u in units)),
                       "ok" if units and all(u["status"] == "ok" for u in units) else
                       ("warming-up" if units else "no-units")),
        "warning": "; ".join(warnings) or None,
    }
