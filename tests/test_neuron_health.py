"""The neuron-health verdict on reference responses whose statistics the test computes itself."""

from __future__ import annotations

import math

import pytest

from server.neuron_health import HealthThresholds, estimate, verdict

T = HealthThresholds(window=4, drift=0.3, collapse=0.5)


def test_estimate_is_the_mean_with_a_95_percent_interval():
    vals = [10, 12, 14, 16]
    mean = 13.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / 3)  # 2.58 < sqrt(13): the Poisson floor applies
    half = 1.96 * math.sqrt(13.0) / 2
    assert sd < math.sqrt(mean)
    assert estimate(vals) == pytest.approx({"mean": 13.0, "low": 13.0 - half, "high": 13.0 + half, "n": 4})
    wide = [0, 40, 0, 40]  # spread above Poisson: the sample spread is used
    s = math.sqrt(sum((v - 20) ** 2 for v in wide) / 3)
    assert estimate(wide)["high"] == pytest.approx(20 + 1.96 * s / 2)
    assert estimate([]) is None


@pytest.mark.parametrize("values, status", [
    ([50, 52, 48, 50], "warming-up"),                       # fewer than 2 windows: no verdict yet
    ([50, 52, 48, 50, 51, 49, 50, 52], "ok"),               # steady
    ([50, 52, 48, 50, 20, 18, 22, 19], "collapse"),         # 40% of the start
    ([50, 52, 48, 50, 33, 32, 31, 34], "drift"),            # 65%: more than 30% away, not below half
    ([50, 52, 48, 50, 70, 72, 69, 71], "drift"),            # upwards too
    ([50, 52, 48, 50, 43, 42, 44, 41], "ok"),               # 85%: within the drift threshold
])
def test_verdict(values, status):
    v = verdict(values, T)
    assert v["status"] == status
    assert (v["message"] is None) == (status in ("ok", "warming-up"))
    if len(values) >= 8:
        assert v["initial"]["mean"] == pytest.approx(sum(values[:4]) / 4)
        assert v["estimate"]["mean"] == pytest.approx(sum(values[-4:]) / 4)


def test_a_dip_inside_the_interval_is_not_an_alarm():
    # 45% of the start but from 4 noisy repeats whose interval still holds the start: no alarm
    noisy = [50, 50, 50, 50, 0, 60, 0, 30]
    v = verdict(noisy, T)
    assert v["estimate"]["high"] >= 50 and v["status"] == "ok"


def test_thresholds_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SNSLAB_NEURON_WINDOW", "9")
    monkeypatch.setenv("SNSLAB_NEURON_COLLAPSE", "0.7")
    t = HealthThresholds()
    assert (t.window, t.collapse, t.drift) == (9, 0.7, 0.3)
    with pytest.raises(ValueError, match="collapse"):
        HealthThresholds(collapse=1.5)
