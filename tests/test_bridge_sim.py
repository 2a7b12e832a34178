"""Simulated source: Poisson counts with the subject's rate for the image shown, latency, determinism."""

import logging

import numpy as np
import pytest

from recording_bridge.adapters.sim import SimSource
from recording_bridge.base import Marker
from recording_bridge.pipeline import CountingPipeline
from recording_bridge.windows import WindowCounter
from server.engine.base import ConfigError


class Brightness:
    """Stand-in subject: rate grows with the image's mean brightness (unit 1 at half the rate)."""

    n_units = 2

    def rate(self, images):
        m = images.reshape(len(images), -1).mean(axis=1)
        r = 10.0 + 80.0 * m
        return np.stack([r, 0.5 * r], axis=1)


class Clock:
    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


def run_session(seed, n=300, period=0.3, poll_every=0.05, response=(0.05, 0.2), baseline=(-0.05, 0.0), **kw):
    clk = Clock(0.0)
    src = SimSource(Brightness(), rng=np.random.default_rng(seed), clock=clk, start_s=0.0, **kw)
    pipe = CountingPipeline(src, WindowCounter(response, baseline, units=src.units(), session_id="s"))
    levels = np.array([0.25, 0.75])
    out = []
    for k in range(n):
        flip = 0.5 + k * period
        pid = f"p{k}"
        pipe.expect([pid])
        src.present(pid, np.full((4, 4, 3), levels[k % 2], np.float32), flip)
        while clk.t < flip + period:
            clk.t += poll_every
            out += pipe.step(0.0)
    clk.t += 1.0
    out += pipe.step(0.0)
    assert len(out) == n
    return out, levels


def test_counts_have_the_subject_mean_for_the_image_shown():
    out, levels = run_session(seed=1, latency_s=0.05, response_s=0.15, baseline_hz=4.0)
    c = np.array([[pc.counts["sim:0"], pc.counts["sim:1"]] for pc in out], float)
    b = np.array([pc.baseline_counts["sim:0"] for pc in out], float)
    assert all(pc.valid and pc.onset_source == "photodiode" and not pc.flagged for pc in out)
    for j, level in enumerate(levels):
        rows = c[j::2]
        lam = (10.0 + 80.0 * level) * 0.15  # the window [50, 200) ms covers the response period exactly
        se = np.sqrt(lam / len(rows))
        assert abs(rows[:, 0].mean() - lam) < 4 * se, (rows[:, 0].mean(), lam)
        assert abs(rows[:, 1].mean() - lam / 2) < 4 * np.sqrt(lam / 2 / len(rows))
        assert rows[:, 0].var(ddof=1) == pytest.approx(lam, rel=0.35)  # Poisson: variance == mean
    lam_b = 4.0 * 0.05
    assert abs(b.mean() - lam_b) < 4 * np.sqrt(lam_b / len(b))


def test_latency_window_sees_only_baseline():
    # [0, 50) ms after onset is before the response starts (latency 50 ms): baseline rate only
    out, _ = run_session(seed=2, n=200, response=(0.0, 0.05), latency_s=0.05, baseline_hz=20.0)
    c = np.array([pc.counts["sim:0"] for pc in out], float)
    lam = 20.0 * 0.05
    assert abs(c.mean() - lam) < 4 * np.sqrt(lam / len(c))


def test_same_seed_same_counts_regardless_of_poll_rate():
    a, _ = run_session(seed=7, n=40, poll_every=0.05)
    b, _ = run_session(seed=7, n=40, poll_every=0.013)
    c, _ = run_session(seed=8, n=40, poll_every=0.05)
    ca = [pc.counts for pc in a]
    assert ca == [pc.counts for pc in b]
    assert [pc.baseline_counts for pc in a] == [pc.baseline_counts for pc in b]
    assert ca != [pc.counts for pc in c]


def test_counts_arrive_only_after_data_lag():
    clk = Clock(0.0)
    src = SimSource(Brightness(), rng=1, clock=clk, start_s=0.0, data_lag_s=0.03)
    pipe = CountingPipeline(src, WindowCounter(units=src.units()))
    pipe.expect(["p"])
    src.present("p", np.zeros((2, 2, 3), np.float32), 1.0)
    clk.t = 1.2 + 0.029
    assert pipe.step() == []
    clk.t = 1.2 + 0.031
    (pc,) = pipe.step()
    assert pc.onset_rig_s == 1.0 and src.watermark() >= 1.2


def test_bad_input_rejected_and_source_keeps_running(caplog):
    class Broken(Brightness):
        def rate(self, images):
            r = super().rate(images)
            if images.mean() > 0.9:
                r[:, 0] = np.nan
            if images.mean() < 0.05:
                r[:, 1] = -3.0
            return r

    clk = Clock(0.0)
    src = SimSource(Broken(), rng=3, clock=clk, start_s=0.0)
    pipe = CountingPipeline(src, WindowCounter(units=src.units()))
    pipe.expect(["nan", "neg", "shape", "late", "ok", "noimg"])
    with caplog.at_level(logging.WARNING):
        src.present("nan", np.ones((2, 2, 3), np.float32), 1.0)
        src.present("neg", np.zeros((2, 2, 3), np.float32), 1.1)
        src.present("shape", np.zeros((2, 2)), 1.2)
        src.present("ok", np.full((2, 2, 3), 0.5, np.float32), 1.3)
        pipe.add_marker(Marker("noimg", 1.4))
        pipe.add_marker(Marker("stranger", 1.4))
        clk.t = 2.0
        out = {pc.presentation_id: pc for pc in pipe.step()}
        src.present("late", np.full((2, 2, 3), 0.5, np.float32), 1.5)  # its response was already simulated
        out.update({pc.presentation_id: pc for pc in pipe.step()})
    assert "not finite" in caplog.text and "negative" in caplog.text and "(H, W, 3)" in caplog.text
    assert "already simulated" in caplog.text and "no image was set" in caplog.text
    assert "'stranger' was never dispatched" in caplog.text
    assert out["ok"].valid and sum(out["ok"].counts.values()) > 0
    for pid in ("nan", "neg", "shape", "noimg", "late"):
        assert not out[pid].valid and out[pid].qc_reasons, pid
    assert out["late"].onset_rig_s == 1.5 and out["nan"].onset_rig_s is None
    assert "stranger" not in out


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="rng"):
        SimSource(Brightness(), rng="seed")
    with pytest.raises(ConfigError, match="subject"):
        SimSource(object(), rng=0)
    with pytest.raises(ConfigError, match="onset_source"):
        SimSource(Brightness(), rng=0, onset_source="guess")
    with pytest.raises(ConfigError, match="count_seed"):
        SimSource(Brightness(), rng=0, count_seed="x")


def test_keyed_presentations_match_the_in_silico_draw_exactly():
    from server.engine.base import presentation_counts, presentation_rng

    seed, n, subject = 987654321, 60, Brightness()

    def live(poll_every, baseline_hz):
        clk = Clock(0.0)
        src = SimSource(subject, rng=np.random.default_rng(1), clock=clk, start_s=0.0, count_seed=seed,
                        baseline_hz=baseline_hz)
        pipe = CountingPipeline(src, WindowCounter(units=src.units()))
        out = []
        for k in range(n):
            g, o = divmod(k, 10)
            pipe.expect([f"p{k}"])
            img = np.full((4, 4, 3), (k % 7) / 6, np.float32)
            src.set_image(f"p{k}", img, key=(g, o, 0))
            pipe.add_marker(Marker(f"p{k}", 0.5 + 0.25 * k))
            while clk.t < 0.5 + 0.25 * (k + 1):
                clk.t += poll_every
                out += pipe.step()
        clk.t += 1.0
        return out + pipe.step()

    insilico = []
    for k in range(n):
        g, o = divmod(k, 10)
        rate = subject.rate(np.full((1, 4, 4, 3), (k % 7) / 6, np.float32))[0]
        insilico.append(presentation_counts(rate, 0.150, presentation_rng(seed, g, o, 0)).tolist())
    for poll_every, baseline_hz in ((0.05, 5.0), (0.017, 40.0)):
        out = live(poll_every, baseline_hz)
        assert [[pc.counts["sim:0"], pc.counts["sim:1"]] for pc in out] == insilico
    assert sum(map(sum, insilico)) > 300
    assert sum(pc.baseline_counts["sim:0"] for pc in out) > 0  # baseline spikes still flow around them
