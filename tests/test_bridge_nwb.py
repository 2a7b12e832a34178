"""The nwb replay adapter on a file that is not ours: units without unit keys and a plain trials table
(written here with pynwb), matched in order; counts from the normal counting pipeline."""

from __future__ import annotations

import datetime

import numpy as np
import pytest

from recording_bridge import CountingPipeline, WindowCounter, make_adapter
from recording_bridge.base import Marker
from snslab_common.errors import ConfigError


@pytest.fixture
def trials_file(tmp_path):
    from pynwb import NWBHDF5IO, NWBFile

    f = NWBFile(session_description="another lab's file", identifier="x1",
                session_start_time=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))
    for start in (1.0, 2.0, 3.0):
        f.add_trial(start_time=start, stop_time=start + 0.1)
    f.add_unit(spike_times=[0.9, 1.06, 1.1, 1.25, 2.2, 3.049, 3.05])
    f.add_unit(spike_times=[1.199, 1.2, 2.0, 2.05, 2.15])
    path = tmp_path / "other.nwb"
    with NWBHDF5IO(str(path), "w") as io:
        io.write(f)
    return path


def test_any_nwb_file_with_units_and_trials_replays_in_order(trials_file):
    t = [0.0]
    src = make_adapter("nwb", path=str(trials_file), speed=0, clock=lambda: t[0])
    assert src.units() == ["nwb:0", "nwb:1"] and not src.keyed
    pipe = CountingPipeline(src, WindowCounter(units=src.units()), check_ids=False)
    assert pipe.step(0) == []  # nothing released before the display shows something
    for k, pid in enumerate(["a", "b", "c"]):
        src.add_marker(Marker(pid, flip_s=100.0 + k))  # the display's clock does not matter: the file's does
    got = {}
    for _ in range(5):
        got.update({pc.presentation_id: pc for pc in pipe.step(0)})
    assert sorted(got) == ["a", "b", "c"]
    # response [50, 200) ms, baseline [-50, 0) ms around the recorded onsets 1.0, 2.0, 3.0 (half-open)
    assert got["a"].counts == {"nwb:0": 2, "nwb:1": 1} and got["a"].baseline_counts == {"nwb:0": 0, "nwb:1": 0}
    assert got["b"].counts == {"nwb:0": 0, "nwb:1": 2} and got["b"].onset_rig_s == 2.0
    assert got["c"].counts == {"nwb:0": 1, "nwb:1": 0} and got["c"].baseline_counts == {"nwb:0": 0, "nwb:1": 0}
    src.add_marker(Marker("d", flip_s=104.0))  # the file has no fourth trial
    (onset,) = src.poll_onsets()
    assert not onset.valid and onset.qc_reasons == ("the recording has no more presentations",)


def test_nwb_adapter_refuses_bad_files_in_one_line(tmp_path):
    (tmp_path / "x.nwb").write_bytes(b"not hdf5")
    with pytest.raises(ConfigError, match=r"^path: .*x\.nwb: not a readable NWB file"):
        make_adapter("nwb", path=str(tmp_path / "x.nwb"))
    with pytest.raises(ConfigError, match=r"^speed: -1 is not a non-negative factor"):
        make_adapter("nwb", path=str(tmp_path / "x.nwb"), speed=-1)
