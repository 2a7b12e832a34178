"""What the rig commands share: ``--config rig.toml`` (one section per machine role) and NAME=VALUE options.

A display PC or a bridge PC keeps its settings in one file instead of a long command line::

    [display]                      # snslab display --config rig.toml
    server = "tcp://10.0.0.1:5555"
    fullscreen = true
    photodiode-patch = "bottom-right:40"

    [bridge]                       # snslab bridge --config rig.toml
    server = "tcp://10.0.0.1:5555"
    adapter = "openephys"
    [bridge.param]
    endpoint = "tcp://127.0.0.1:5557"
    word_lines = [0, 1, 2, 3]      # list-valued adapter parameters stay lists

Keys are the command's long options (dashes or underscores); options given on the command line win.
"""

from __future__ import annotations

import json
import signal
import threading
import tomllib
from pathlib import Path
from typing import Any

import typer


def parse_value(text: str) -> Any:
    """A NAME=VALUE value: JSON when it parses (numbers, true/false, [lists], {tables}), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_params(items: list[str] | None, option: str) -> dict[str, Any]:
    """Repeated ``--param NAME=VALUE`` -> {name: value}; a malformed item is a one-line usage error."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: use NAME=VALUE, e.g. word_lines=[0,1,2]", param_hint=option)
        out[key.strip()] = parse_value(value.strip())
    return out


def config_callback(section: str):
    """An eager ``--config`` callback: the file's ``[section]`` becomes the command's defaults."""

    def load(ctx: typer.Context, param, value: Path | None) -> Path | None:
        if value is None:
            return value
        try:
            data = tomllib.loads(Path(value).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise typer.BadParameter(f"{value}: {exc}", param_hint="--config") from None
        table = data.get(section)
        if not isinstance(table, dict):
            raise typer.BadParameter(f"{value} has no [{section}] table", param_hint="--config")
        names = {p.name: p for p in ctx.command.params if p.name != "config"}
        defaults: dict[str, Any] = {}
        for key, v in table.items():
            name = key.replace("-", "_")
            p = names.get(name)
            if p is None:
                allowed = ", ".join(sorted(n.replace("_", "-") for n in names))
                raise typer.BadParameter(f"[{section}] {key}: unknown setting (allowed: {allowed})",
                                         param_hint="--config")
            if getattr(p, "multiple", False) and isinstance(v, dict):  # a [section.param] table
                v = [f"{k}={json.dumps(x)}" for k, x in v.items()]
            defaults[name] = v
        ctx.default_map = {**(ctx.default_map or {}), **defaults}
        return value

    return load


def config_option(section: str) -> Any:
    return typer.Option(
        None, "--config", exists=True, dir_okay=False, is_eager=True, callback=config_callback(section),
        help=f"TOML file whose [{section}] table sets these options (the command line wins)",
    )


def stop_requested() -> threading.Event:
    """An event that SIGTERM (kill, systemd) or Ctrl-C sets: a rig process ends its loop and closes cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop
