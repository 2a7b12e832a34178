"""Issue 12, item 1: the adversarial probe's own search (server.engine.adversarial.ShellSearch) beats the
contrast control at equal stretch, is the adversarial default, and keeps runs exact (state round trips,
stored sessions replayed bit for bit)."""

import numpy as np
import pytest

from server.config import parse_config
from server.engine.adversarial import ShellSearch
from server.engine.base import ConfigError
from server.engine.generators import DCTGenerator
from server.engine.optimizers import Optimizer, make_optimizer
from server.insilico import DatabaseRecorder, run_probe
from server.stored import replay

pytest_plugins = ["db_fixtures"]

RUN = {
    "mode": "adversarial", "seed": 3, "population": 12, "generations": 30, "stages": ["pixel"],
    "generator": {"name": "dct", "code_size": 128, "image_size": 24, "channels": 1},
    "subject": {"name": "complex-cell", "orientation": 30.0, "wavelength": 6.0},
    "reference": {"source": "maximize", "generations": 20},
}


def test_adversarial_default_is_the_shell_search_and_an_explicit_optimizer_stays():
    cfg = parse_config({"mode": "adversarial"})
    assert cfg.optimizer.name == "shell" and cfg.optimizer.sigma0 == pytest.approx(0.7)
    assert parse_config({"mode": "adversarial", "optimizer": {"sigma0": 0.4}}).optimizer.sigma0 == 0.4
    assert parse_config({"mode": "adversarial", "optimizer": {"name": "sepcma"}}).optimizer.name == "sepcma"
    assert parse_config({"mode": "invariance"}).optimizer.name == "sepcma"
    # Recorded explicitly: a stored config parses back to the same search.
    again = parse_config(parse_config({"mode": "adversarial"}).model_dump(mode="json"))
    assert again.optimizer.name == "shell"


def test_shell_search_refuses_the_invariance_probe_in_one_line():
    with pytest.raises(ConfigError) as err:
        run_probe(parse_config(RUN | {"mode": "invariance", "generations": 1, "optimizer": {"name": "shell"}}))
    assert str(err.value).startswith("optimizer.name:") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="optimizer.target_change"):
        make_optimizer("shell", np.ones(8), 0.5, 6, 0, target_change=1.5)


def test_it_starts_along_the_contrast_control_on_a_shell():
    gen = DCTGenerator(code_size=32, image_size=8, channels=1)
    z = np.random.default_rng(0).normal(size=32)
    opt = make_optimizer("shell", z, 0.5, 6, seed=1)
    opt.attach(gen, gen.render(z[None])[0], "adversarial")
    grey = gen.encode(np.full((1, 8, 8, 3), gen.render(z[None])[0].mean(), np.float32))[0]
    want = (grey - z) / np.linalg.norm(grey - z)
    assert np.allclose(opt.direction, want) and opt.rho == pytest.approx(0.25 * np.linalg.norm(grey - z))
    codes = opt.ask()
    assert np.allclose(np.linalg.norm(codes - z, axis=1), opt.rho)  # every candidate on the shell
    d = (codes - z) / opt.rho
    # Mirrored pairs: the two members of a pair lie symmetrically about the mean direction.
    # (their parts orthogonal to it point in opposite directions)
    a, b = d[:3] - (d[:3] @ want)[:, None] * want, d[3:] - (d[3:] @ want)[:, None] * want
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert np.allclose(cos, -1.0)


def test_radius_bisects_toward_the_target_change():
    z = np.ones(16)
    opt = make_optimizer("shell", z, 0.3, 8, seed=2, target_change=0.5)
    rho0 = opt.rho
    codes = opt.ask()
    opt.tell_measured(codes, np.zeros(8), np.full(8, 0.9))  # every candidate halved it: shrink
    assert opt.rho < rho0
    rho1 = opt.rho
    codes = opt.ask()
    opt.tell_measured(codes, np.zeros(8), np.full(8, 0.1))  # none did: grow
    assert opt.rho > rho1
    assert [round(h[1], 6) for h in opt.history] == [1.0, 0.0]


def test_state_round_trip_continues_the_same_sequence():
    rng = np.random.default_rng(5)
    opt = make_optimizer("shell", rng.normal(size=20), 0.7, 10, seed=9)
    for _ in range(3):
        c = opt.ask()
        opt.tell_measured(c, np.zeros(10), rng.random(10))
    pending = opt.ask()
    twin = Optimizer.restore(opt.state())
    assert np.array_equal(twin.pending, pending)
    change = rng.random(10)
    for o in (opt, twin):
        o.tell_measured(pending, np.zeros(10), change)
    assert np.array_equal(opt.ask(), twin.ask()) and opt.rho == twin.rho


def test_noise_free_complex_cell_beats_every_control():
    """Noise-free: the shell search halves the response of a model complex cell (reference from a noise-free
    maximize run: a clean, saturating MEI, where even the exact gradient direction needs only ~15% less
    stretch than contrast reduction) at a smaller stretch than the contrast control needs for that change."""
    res = run_probe(parse_config(RUN | {"noise": {"kind": "none"}, "reference": RUN["reference"]
                                        | {"check_repeats": 0}}))
    c = res.evaluation["controls"]
    assert c["claim_holds"] and c["reached_target"], c["beats"]
    assert c["contrast_to_probe_stretch_ratio"] > 1.03, c["contrast_to_probe_stretch_ratio"]
    assert c["at_probe_stretch"]["contrast"]["change"] < c["probe"]["change"] and c["probe"]["change"] >= 0.5


def test_under_spike_noise_the_claim_holds_and_the_response_is_halved():
    res = run_probe(parse_config(RUN))
    ev = res.evaluation
    assert ev["claim_holds"] and ev["controls"]["reached_target"], ev["controls"]["beats"]
    # (a noisy maximize leaves parts in the reference that do not drive the unit: the search skips them)
    assert ev["retention"] <= 0.5 and ev["controls"]["contrast_to_probe_stretch_ratio"] > 1.3


def test_a_stored_shell_search_replays_bit_for_bit(repo):
    rec = DatabaseRecorder(repo)
    result = run_probe(parse_config(RUN | {"generations": 5, "reference": RUN["reference"] | {"generations": 6}}),
                       recorder=rec)
    rec.finish()
    assert isinstance(result.probe.search.optimizer, ShellSearch)
    sid = rec.sessions[-1][1]
    rep = replay(repo, sid)
    assert rep.identical and rep.generations == 5
    assert np.array_equal(rep.session.search.result().code, result.probe.search.result().code)
    assert rep.session.search.optimizer.rho == result.probe.search.optimizer.rho
    # A resume from the stored state (what a restart after kill -9 does) continues the same search.
    from server.stored import rebuild

    runner = rebuild(repo, sid).runner(repo)
    runner.resume()
    assert isinstance(runner.search.optimizer, ShellSearch)
    a, b = runner.search.optimizer, result.probe.search.optimizer
    assert (a.generation, a.rho, a.step, a.history) == (b.generation, b.rho, b.step, b.history)
    assert np.array_equal(a.direction, b.direction) and np.array_equal(a.ask(), b.ask())  # same next step
    assert np.array_equal(runner.search.result().code, result.probe.search.result().code)
