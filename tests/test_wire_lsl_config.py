"""The one LSL loopback config shared by the display client and the bridge."""

from __future__ import annotations

import subprocess
import sys

from wire.lsl_config import LOOPBACK_CONFIG, use_loopback_lsl, write_loopback_config


def test_config_keeps_lsl_on_loopback(tmp_path):
    path = write_loopback_config(tmp_path)
    text = path.read_text()
    assert text == LOOPBACK_CONFIG
    for line in ("IPv6 = disable", "ResolveScope = machine", "MachineAddresses = {127.0.0.1}",
                 "AddressesOverride = {127.0.0.1}", "KnownPeers = {127.0.0.1}"):  # fmt: skip
        assert line in text
    assert write_loopback_config(tmp_path) == path  # idempotent


def test_operator_config_wins_unless_overridden(tmp_path, monkeypatch):
    monkeypatch.setenv("LSLAPICFG", "/etc/lab/lsl.cfg")
    assert str(use_loopback_lsl(tmp_path)) == "/etc/lab/lsl.cfg"
    forced = use_loopback_lsl(tmp_path, override=True)
    assert forced.parent == tmp_path and str(forced) == __import__("os").environ["LSLAPICFG"]
    monkeypatch.delenv("LSLAPICFG")
    assert use_loopback_lsl(tmp_path) == forced


def test_liblsl_loads_it_and_resolves_on_loopback(tmp_path):
    code = (
        "from wire.lsl_config import use_loopback_lsl; use_loopback_lsl(%r, override=True)\n"
        "import pylsl\n"
        "o = pylsl.StreamOutlet(pylsl.StreamInfo('snslab-cfg-test', 'Markers', 1, 0, 'string', 'cfgtest'))\n"
        "s = pylsl.resolve_byprop('source_id', 'cfgtest', timeout=20)\n"
        "print(len(s), s[0].hostname() != '' if s else None)\n"
    ) % str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "True"]
    assert "Configuration loaded from " + str(tmp_path) in out.stderr  # liblsl read our file
