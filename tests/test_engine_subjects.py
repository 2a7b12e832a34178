"""Model neurons (Naka-Rushton, phase/translation invariance, MEIs), Poisson counts, CNN units, populations."""

from __future__ import annotations

import numpy as np
import pytest

from server.engine.base import ConfigError
from snslab_common.gabor import gabor_pair, grating, to_rgb
from server.engine.subjects import (
    SUBJECTS,
    ComplexCell,
    MixedUnit,
    PooledUnit,
    SimpleCell,
    UnitPopulation,
    make_subject,
    naka_rushton,
)

MODEL_NEURONS = ["complex-cell", "simple-cell", "pooled-unit", "mixed-unit"]


def test_naka_rushton_values():
    u = np.array([0.0, 1.0, 2.0, 3.0, -1.0])
    np.testing.assert_allclose(naka_rushton(u, c50=1.0), [2.0, 52.0, 82.0, 92.0, 2.0])
    np.testing.assert_allclose(naka_rushton(np.array([2.0]), baseline=0, gain=10, exponent=1, c50=2.0), [5.0])


@pytest.mark.parametrize("name", MODEL_NEURONS)
def test_half_max_at_20_percent_contrast_and_rate_at_mei(name):
    s = make_subject(name)
    assert s.baseline == 2.0 and s.gain == 100.0 and s.exponent == 2.0 and s.n_units == 1
    assert s.rate(s.matched_image(0.2)[None])[0, 0] == pytest.approx(52.0, rel=1e-9)
    # drive is quadratic in contrast: the full-contrast pattern gives u = 25 c50 -> 2 + 100 * 625/626
    assert s.rate(s.matched_image(1.0)[None])[0, 0] == pytest.approx(2.0 + 100.0 * 625 / 626, rel=1e-6)
    assert s.rate(np.full((1, 64, 64, 3), 0.5))[0, 0] == pytest.approx(2.0)  # blank screen: baseline
    c50 = make_subject(name, c50=3.0)
    assert c50.c50 == 3.0


def test_complex_cell_mei_is_a_local_maximum_within_the_unit_box():
    cell = ComplexCell(image_size=32, wavelength=6.0, orientation=30.0)
    mei = cell.preferred_image(1.0)
    assert set(np.unique(mei)) <= {0.0, 0.5, 1.0}
    best = cell.drive(mei[None])[0]
    rng = np.random.default_rng(0)
    # no random image in [0, 1] and no single-pixel flip of the MEI does better
    assert cell.drive(rng.random((200, 32, 32, 3))).max() < best
    flips = np.repeat(mei[None], 300, axis=0)
    pix = rng.choice(32 * 32, size=300, replace=False)
    flips.reshape(300, -1, 3)[np.arange(300), pix] = 1.0 - flips.reshape(300, -1, 3)[np.arange(300), pix]
    assert cell.drive(flips).max() <= best * (1 + 1e-12)
    # the Gabor-shaped image of the same peak contrast is a much weaker stimulus than the binarised one
    g0 = cell.g0
    smooth = to_rgb(0.5 + 0.5 * g0 / np.abs(g0).max())
    assert cell.drive(smooth[None])[0] < 0.5 * best
    simple = SimpleCell(image_size=32, wavelength=6.0, orientation=30.0)
    pref = simple.preferred_image(1.0)
    assert simple.drive(pref[None])[0] == pytest.approx((0.5 * np.abs(simple.g0).sum()) ** 2)


def test_complex_cell_is_phase_invariant_and_simple_cell_is_not():
    cx, sc = ComplexCell(), SimpleCell()
    phases = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    imgs = to_rgb(np.stack([grating(64, 0.0, 8.0, ph, 0.6) for ph in phases]))
    rc, rs = cx.rate(imgs)[:, 0], sc.rate(imgs)[:, 0]
    assert (rc.max() - rc.min()) / rc.mean() < 0.01
    assert rc.min() > 20.0
    assert rs[0] == pytest.approx(rc[0], rel=1e-6)  # in phase: the simple cell sees all the energy
    assert rs[8] == pytest.approx(2.0)  # antiphase: rectified to baseline
    # orientation tuning: an orthogonal grating barely drives the complex cell
    ortho = to_rgb(grating(64, 90.0, 8.0, 0.0, 0.6))[None]
    assert cx.rate(ortho)[0, 0] < 2.5


def test_pooled_unit_is_translation_invariant_and_complex_cell_is_not():
    pooled, cx = PooledUnit(), ComplexCell()
    assert len(pooled.shifts) == 9 and pooled.filters.shape == (18, 64, 64)
    c = cx.centre

    def patch(dy, dx):
        g0, _ = gabor_pair(64, (c[0] + dy, c[1] + dx), 0.0, 8.0)
        return to_rgb(0.5 + 0.5 * g0 / np.abs(g0).max())

    # a Gabor patch moved to other pooled positions (one wavelength apart)
    imgs = np.stack([patch(0, 0), patch(0, 8), patch(-8, 8), patch(8, -8)])
    up, uc = pooled.drive(imgs), cx.drive(imgs)
    assert np.all(np.abs(up / up[0] - 1) < 0.01)
    assert np.all(uc[1:] < 0.2 * uc[0])
    rp = pooled.rate(imgs)[:, 0]
    assert rp.min() > 20.0 and np.all(np.abs(rp / rp[0] - 1) < 0.01)
    # the soft maximum lies between the mean and the max of the pair energies, near the max
    e = pooled.energies_from_outputs(pooled.filter_outputs(imgs))
    assert np.all(up <= e.max(axis=1)) and np.all(up >= e.mean(axis=1))
    assert np.all(up > 0.8 * e.max(axis=1))
    assert PooledUnit(grid=2).filters.shape == (8, 64, 64)


def test_mixed_unit_breaks_the_contrast_inversion_symmetry():
    cx, mixed = ComplexCell(), MixedUnit(alpha=1.0)
    img = mixed.matched_image(0.15)[None]  # below saturation, where the asymmetry shows in the rate
    inverted = 1.0 - img
    assert cx.rate(img)[0, 0] == pytest.approx(cx.rate(inverted)[0, 0])
    assert mixed.rate(img)[0, 0] > mixed.rate(inverted)[0, 0] + 10.0
    u_img, u_inv = mixed.drive(img)[0], mixed.drive(inverted)[0]
    assert u_img == pytest.approx(2 * u_inv, rel=1e-6)  # alpha = 1 doubles the in-phase energy


def test_drive_depends_only_on_filter_outputs():
    rng = np.random.default_rng(1)
    imgs = rng.random((5, 64, 64, 3))
    for name in MODEL_NEURONS:
        s = make_subject(name, orientation=20.0, wavelength=10.0, centre=[30, 34])
        dx = imgs.mean(axis=-1) - 0.5
        p = dx.reshape(5, -1) @ s.filters.reshape(len(s.filters), -1).T
        np.testing.assert_allclose(s.drive_from_outputs(p), s.drive(imgs), rtol=1e-12)
        np.testing.assert_allclose(s.rate(imgs)[:, 0], s.rate_from_drive(s.drive(imgs)), rtol=1e-12)


def test_poisson_counts_average_to_rate_times_window():
    cell = ComplexCell(image_size=16, wavelength=4.0)
    img = cell.matched_image(0.2)  # 52 spikes/s
    n, window = 4000, 0.2
    counts = cell.counts(np.repeat(img[None], n, axis=0), window, np.random.default_rng(2))
    assert counts.shape == (n, 1) and counts.dtype == np.int64
    lam = 52.0 * window
    se = np.sqrt(lam / n)
    assert abs(counts.mean() - lam) < 4 * se
    assert counts.var() == pytest.approx(lam, rel=0.1)  # Poisson: variance = mean
    again = cell.counts(np.repeat(img[None], n, axis=0), window, np.random.default_rng(2))
    np.testing.assert_array_equal(counts, again)  # the seeded generator decides everything


def test_population_stacks_units():
    units = [ComplexCell(), SimpleCell(orientation=90.0), MixedUnit()]
    pop = UnitPopulation(units)
    imgs = np.random.default_rng(3).random((4, 64, 64, 3))
    r = pop.rate(imgs)
    assert pop.n_units == 3 and r.shape == (4, 3)
    for j, u in enumerate(units):
        np.testing.assert_array_equal(r[:, j], u.rate(imgs)[:, 0])
    assert pop.counts(imgs, 0.1, np.random.default_rng(0)).shape == (4, 3)


def test_subject_config_errors():
    with pytest.raises(ConfigError) as err:
        make_subject("hypercomplex-cell")
    assert err.value.field == "subject"
    assert "cnn-unit, complex-cell, mixed-unit, pooled-unit, python, simple-cell" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_subject("complex-cell", wavelenght=4)
    assert err.value.field == "subject.wavelenght" and "wavelength" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_subject("pooled-unit", grid=5)
    assert err.value.field == "subject.grid" and "2, 3" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_subject("mixed-unit", alpha=-1)
    assert err.value.field == "subject.alpha"
    assert make_subject("pooled-unit", grid=2, temperature=0.2, image_size=48).temperature == 0.2
    cell = make_subject("complex-cell", image_size=64)
    with pytest.raises(ConfigError) as err:
        cell.rate(np.zeros((1, 32, 32, 3)))
    assert err.value.field == "subject.image_size" and "32x32" in str(err.value)
    assert set(SUBJECTS) == set(MODEL_NEURONS) | {"cnn-unit"}


# ----------------------------------------------------------------------------------------------- CNN unit
torch = pytest.importorskip("torch")


def test_cnn_unit_reads_one_feature_through_relu():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh())
    imgs = np.random.default_rng(4).random((6, 10, 10, 3)).astype(np.float32)
    with torch.no_grad():
        act = net(torch.from_numpy(imgs).permute(0, 3, 1, 2)).numpy()  # (6, 4, 10, 10)
    unit = make_subject("cnn-unit", module=net, layer="1", unit=[2], input_size=10, normalize=None,
                        device="cpu", baseline=1.5, gain=20.0)
    assert unit.index == np.ravel_multi_index((2, 5, 5), (4, 10, 10))
    expect = 1.5 + 20.0 * np.maximum(act[:, 2, 5, 5], 0.0)
    np.testing.assert_allclose(unit.rate(imgs)[:, 0], expect, rtol=1e-5)
    assert (act[:, 2, 5, 5] < 0).any()  # the relu mattered
    flat = make_subject("cnn-unit", module=net, layer="1", unit=7, input_size=10, normalize=None, device="cpu")
    np.testing.assert_allclose(flat.rate(imgs)[:, 0], np.maximum(act.reshape(6, -1)[:, 7], 0.0), rtol=1e-5)
    pos = make_subject("cnn-unit", module=net, layer="1", unit=[1, 0, 9], input_size=10, normalize=None,
                       device="cpu")
    assert pos.index == np.ravel_multi_index((1, 0, 9), (4, 10, 10))


def test_cnn_unit_errors_name_subject_fields():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh())
    with pytest.raises(ConfigError) as err:
        make_subject("cnn-unit", module=net, layer="5", input_size=10, device="cpu")
    assert err.value.field == "subject.layer" and "0, 1" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_subject("cnn-unit", module=net, layer="1", unit=400, input_size=10, device="cpu")
    assert err.value.field == "subject.unit" and "0..399" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_subject("cnn-unit", module=net, layer="1", unit=[4], input_size=10, device="cpu")
    assert err.value.field == "subject.unit"
