"""One CLI style: `snslab` lists only commands that exist, `snslab bridge --help` lists every adapter's
parameters, adapter parameters take lists, and a rig.toml sets a bridge PC's options."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recording_bridge import ADAPTERS
from recording_bridge import cli as bridge_cli

ROOT = Path(__file__).resolve().parents[1]


def snslab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_root_help_lists_exactly_the_commands_that_answer():
    out = snslab("--help")
    assert out.returncode == 0, out.stderr
    listed = re.findall(r"^  (\w[\w-]*)  ", out.stdout.split("Commands:")[1], re.M)
    import typer

    from server.cli import app

    assert set(listed) == set(typer.main.get_command(app).commands)  # every registered command, and only those
    assert {"insilico", "resume", "replay", "server", "demo", "display", "bridge", "db",
            "sweep", "sweep-report", "recount", "rescore", "export"} <= set(listed)
    for name in listed:
        r = snslab(name, "--help")
        assert r.returncode == 0 and "Usage:" in r.stdout, (name, r.stderr)
    db = snslab("db", "--help").stdout
    assert all(c in db for c in ("check", "migrate", "downgrade"))


def test_bridge_help_lists_each_adapters_parameters():
    out = snslab("bridge", "--help")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for name, cls in ADAPTERS.items():
        section = text.split(f"\n  {name}: ")[1].split("\n\n")[0]
        own = [p for p in list(inspect.signature(cls.__init__).parameters)[1:]
               if p not in bridge_cli.NOT_PARAMS.get(name, ())]
        assert own and all(f"    {p} (" in section for p in own), (name, own)


def _parsed(monkeypatch, argv):
    seen = []
    monkeypatch.setattr(bridge_cli, "run", lambda opts, level: seen.append(opts) or 0)
    r = CliRunner().invoke(bridge_cli.app, argv)
    assert r.exit_code == 0, r.output
    return seen[0]


def test_list_valued_parameters_and_rig_toml(monkeypatch, tmp_path):
    a = _parsed(monkeypatch, ["--adapter", "openephys", "--param", "word_lines=[3, 4, 5]", "--param",
                              "endpoint=tcp://127.0.0.1:5999", "--param", "sample_rate=30000", "--response-window",
                              "40,240"])
    assert a.params == {"word_lines": [3, 4, 5], "endpoint": "tcp://127.0.0.1:5999", "sample_rate": 30000}
    assert a.response_window == pytest.approx((0.04, 0.24))
    src = ADAPTERS["openephys"](**a.params)  # the values reach the adapter as a list and a number
    try:
        assert list(src.word_lines) == [3, 4, 5]
    finally:
        src.close()
    rig = tmp_path / "rig.toml"
    rig.write_text('[bridge]\nserver = "tcp://10.0.0.7:5555"\nadapter = "openephys"\nclient-id = "rig-3"\n'
                   '[bridge.param]\nword_lines = [0, 2]\nendpoint = "tcp://127.0.0.1:5557"\n')
    a = _parsed(monkeypatch, ["--config", str(rig)])
    assert (a.server, a.adapter, a.client_id) == ("tcp://10.0.0.7:5555", "openephys", "rig-3")
    assert a.params == {"word_lines": [0, 2], "endpoint": "tcp://127.0.0.1:5557"}
    a = _parsed(monkeypatch, ["--config", str(rig), "--client-id", "rig-4"])  # the command line wins
    assert a.client_id == "rig-4"


@pytest.mark.parametrize("argv, message", [
    (["--param", "word_lines"], "'word_lines': use NAME=VALUE"),
    (["--adapter", "blackrock"], "unknown recording source 'blackrock' (allowed: lsl, nwb, openephys, sim)"),
    (["--response-window", "200,50"], "START must be before END"),
])
def test_bridge_refuses_bad_options_in_one_line(argv, message):
    r = CliRunner().invoke(bridge_cli.app, argv)
    assert r.exit_code == 2 and message in r.output.strip().splitlines()[-1]
