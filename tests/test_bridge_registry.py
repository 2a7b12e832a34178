"""Adapter registry, one-line config errors, and the sim -> counts -> outbox path end to end."""

import numpy as np
import pytest

from recording_bridge import ADAPTERS, CountingPipeline, WindowCounter, make_adapter
from recording_bridge.adapters.openephys import OpenEphysSource
from recording_bridge.adapters.sim import SimSource
from recording_bridge.base import SpikeSource
from server.engine.base import ConfigError


class Flat:
    n_units = 1

    def rate(self, images):
        return np.full((len(images), 1), 30.0)


def test_registry_names_and_interface():
    assert set(ADAPTERS) == {"sim", "lsl", "openephys", "nwb"}
    assert all(issubclass(cls, SpikeSource) for cls in ADAPTERS.values())
    assert {cls.name for cls in ADAPTERS.values()} == set(ADAPTERS)


def test_make_adapter_errors_are_one_line():
    with pytest.raises(ConfigError) as e:
        make_adapter("blackrock")
    assert str(e.value) == "adapter: unknown recording source 'blackrock' (allowed: lsl, nwb, openephys, sim)"
    with pytest.raises(ConfigError, match=r"adapter\.port: unknown parameter for recording source 'openephys' .*allowed: .*endpoint"):
        make_adapter("openephys", port=5557)
    with pytest.raises(ConfigError, match=r"adapter\.subject: required by recording source 'sim'"):
        make_adapter("sim", rng=0)
    with pytest.raises(ConfigError, match="word_lines"):
        make_adapter("openephys", word_lines=[])


def test_make_adapter_builds_sources():
    src = make_adapter("openephys", endpoint="tcp://127.0.0.1:1", sample_rate=30000.0)
    assert isinstance(src, OpenEphysSource) and src.watermark() == -np.inf and src.poll(0.0) == []
    src.close()
    src.close()  # twice is fine
    sim = make_adapter("sim", subject=Flat(), rng=np.random.default_rng(0), clock=lambda: 0.0, start_s=0.0)
    assert isinstance(sim, SimSource) and sim.units() == ["sim:0"]


def test_sim_to_counts_end_to_end():
    t = [0.0]
    sim = make_adapter("sim", subject=Flat(), rng=np.random.default_rng(5), clock=lambda: t[0], start_s=0.0)
    pipe = CountingPipeline(sim, WindowCounter(units=sim.units(), session_id="sess"))
    img = np.full((4, 4, 3), 0.5, np.float32)
    for k in range(10):
        pipe.expect([f"p{k}"])
        sim.present(f"p{k}", img, 0.2 + 0.25 * k)
    out = []
    while t[0] < 4.0:
        t[0] += 0.05
        out.extend(pipe.step())
    assert [pc.presentation_id for pc in out] == [f"p{k}" for k in range(10)]  # each once, in onset order
    assert all(pc.valid and set(pc.counts) == {"sim:0"} for pc in out)
