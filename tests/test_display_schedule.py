"""The display's pure scheduling logic (no PsychoPy): frames, dedupe across re-sends, controls, QC, and
that the display PC never imports the server's stack."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from stimulus_client.app import ClientOptions

from stimulus_client.schedule import Schedule, frames_for, presentation_frames, timing_qc, ttl_word
from wire.messages import ImageSpec, Presentation, StimulusBatch


def make_batch(ids, batch_id="b0", **pres_kw):
    img = np.zeros((4, 4, 3), np.uint8)
    pres = [Presentation(presentation_id=p, stimulus_id="s0", image=0, order=10 - i, **pres_kw) for i, p in enumerate(ids)]
    return StimulusBatch(batch_id=batch_id, generation=1, images=[ImageSpec.of("s0", img)], presentations=pres), [img]


@pytest.mark.parametrize(
    "ms, hz, frames", [(100, 60, 6), (100, 59.94, 6), (100, 144, 14), (100, 120, 12), (150, 60, 9), (1, 60, 1), (25, 60, 2)]
)
def test_frames_for(ms, hz, frames):
    assert frames_for(ms, hz) == frames


def test_frames_for_refuses_bad_rate():
    with pytest.raises(ValueError, match="refresh_hz"):
        frames_for(100, 0)
    with pytest.raises(ValueError, match="refresh_hz"):
        frames_for(100, float("nan"))


def test_presentation_frames_precedence():
    p = Presentation(presentation_id="p", stimulus_id="s", image=0, order=0, on_ms=100, off_ms=150)
    assert presentation_frames(p, 60) == (6, 9)
    assert presentation_frames(p, 144) == (14, 22)
    fixed = p.model_copy(update={"frames_on": 3, "frames_off": 4})
    assert presentation_frames(fixed, 60) == (3, 4)
    assert presentation_frames(fixed, 60, frames_on=2, frames_off=1) == (2, 1)  # the operator wins


def test_schedule_orders_and_dedupes_resends():
    s = Schedule()
    b, imgs = make_batch(["a", "b", "c"])
    assert s.add_batch(b, imgs, "S1") == 3
    qb = s.next_batch(0)
    assert [p.presentation_id for p in qb.presentations] == ["c", "b", "a"]  # by order
    assert s.outstanding() == ["c", "b", "a"]
    s.mark_shown("c")
    # the server re-sends the batch (reconnect): nothing already held comes back
    assert s.add_batch(b, imgs, "S1") == 0 and s.next_batch(0) is None
    # a batch with one old and one new presentation only adds the new one
    b2, imgs2 = make_batch(["b", "d"], batch_id="b1")
    assert s.add_batch(b2, imgs2, "S1") == 1
    assert s.outstanding() == ["b", "a", "d"]
    assert [p.presentation_id for p in s.next_batch(0).presentations] == ["d"]


def test_controls():
    s = Schedule()
    b, imgs = make_batch(["a"])
    s.control("pause")
    s.add_batch(b, imgs, "S1")
    assert s.next_batch(0) is None
    s.control("resume")
    qb = s.next_batch(0)
    assert qb is not None and s.still_wanted(qb)
    s.control("clear")
    assert not s.still_wanted(qb) and s.outstanding() == []
    b2, imgs2 = make_batch(["x"], batch_id="b2")
    s.add_batch(b2, imgs2, "S1")
    s.control("stop")
    assert s.next_batch(0) is None and s.stopping
    with pytest.raises(ValueError, match="allowed: clear, pause, resume, stop"):
        s.control("reboot")


def test_next_batch_wakes_when_a_batch_arrives():
    s = Schedule()
    b, imgs = make_batch(["a"])
    t = threading.Timer(0.05, lambda: s.add_batch(b, imgs, "S1"))
    t.start()
    got = s.next_batch(timeout_s=30)  # returns as soon as the batch is added
    t.join()
    assert got is not None and got.batch_id == "b0"


def test_ttl_words_cycle_and_skip_zero():
    assert [ttl_word(n) for n in (0, 1, 254, 255, 256)] == [1, 2, 255, 1, 2]


def test_timing_qc():
    hz = 100.0  # 10 ms frames
    ok = dict(refresh_hz=hz, frames_on=10, prev_flip=0.99, onset=1.0, offset=1.1, dropped=0)
    assert timing_qc(**ok) == []
    assert timing_qc(**{**ok, "prev_flip": 0.98}) == ["late_onset"]  # 20 ms > 1.5 frames
    assert timing_qc(**{**ok, "offset": 1.12, "dropped": 2}) == ["dropped_frames", "on_duration"]
    assert timing_qc(**{**ok, "prev_flip": None}) == []


def test_display_side_never_imports_the_server_stack():
    code = (
        "import sys; import wire, wire.transport, wire.ledger, wire.lsl_config, stimulus_client.app, stimulus_client.cli, "
        "stimulus_client.schedule, stimulus_client.markers, stimulus_client.display; "
        "bad = sorted(m for m in ('torch', 'fastapi', 'sqlalchemy', 'server', 'recording_bridge', 'scipy') if m in sys.modules); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_cli_help_explains_every_option():
    import click
    import typer

    from stimulus_client.cli import app

    for param in typer.main.get_command(app).params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help and len(param.help) > 10, param.opts
    out = subprocess.run([sys.executable, "-m", "stimulus_client", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for opt in ("--server", "--fullscreen", "--windowed", "--screen", "--size", "--frames-on", "--frames-off",
                "--fixation", "--photodiode-patch", "--lsl-markers", "--no-lsl-markers", "--ttl", "--client-id",
                "--config"):  # fmt: skip
        assert opt in out.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--photodiode-patch", "middle"], "photodiode patch corner 'middle' (allowed: top-left, top-right, bottom-left, bottom-right)"),
        (["--size", "big"], "size 'big': use WIDTHxHEIGHT"),
        (["--ttl", "usb"], "ttl 'usb': use serial:/dev/ttyUSB0[@BAUD] or parallel:0x378"),
        (["--frames-on", "0"], "'--frames-on'"),
        (["--lsl-scope", "lan"], "'lan' is not one of 'loopback', 'network'"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(argv, message):
    from typer.testing import CliRunner

    from stimulus_client.cli import app

    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2
    err = r.output.strip().splitlines()[-1]
    assert err.startswith("Error: Invalid value for") and message in err


def _parsed(monkeypatch, argv) -> ClientOptions:
    """What the command line turns into: the options ``run`` would be given (the window is not opened)."""
    from typer.testing import CliRunner

    from stimulus_client import cli

    seen = []
    monkeypatch.setattr(cli, "run", lambda opts: seen.append(opts) or 0)
    r = CliRunner().invoke(cli.app, argv)
    assert r.exit_code == 0, r.output
    return seen[0]


def test_cli_defaults_and_rig_toml(monkeypatch, tmp_path):
    a = _parsed(monkeypatch, [])
    assert (a.fullscreen, a.size, a.lsl_markers, a.lsl_scope, a.frames_on, a.ttl) == (False, (800, 600), True, "loopback", None, None)
    a = _parsed(monkeypatch, ["--fullscreen", "--photodiode-patch", "bottom-right:32", "--no-lsl-markers"])
    assert a.fullscreen and a.photodiode_patch == ("bottom-right", 32) and not a.lsl_markers
    rig = tmp_path / "rig.toml"
    rig.write_text('[display]\nserver = "tcp://10.0.0.7:5555"\nfullscreen = true\nphotodiode-patch = "top-left:24"\n'
                   "frames_on = 6\n")
    a = _parsed(monkeypatch, ["--config", str(rig), "--frames-on", "3"])
    assert (a.server, a.fullscreen, a.photodiode_patch, a.frames_on) == ("tcp://10.0.0.7:5555", True, ("top-left", 24), 3)
    rig.write_text('[display]\nfullscreen = true\nbrightness = 2\n')
    from typer.testing import CliRunner

    from stimulus_client.cli import app

    r = CliRunner().invoke(app, ["--config", str(rig)])
    assert r.exit_code == 2 and "[display] brightness: unknown setting (allowed: " in r.output
