"""What the bridge tells the server about where its data came from: the acquisition system's own
recording identity (so the raw recording can be found later) and the clock model that put spikes and
onsets on the rig clock (so an analyst can judge or redo the alignment).

Both are read from the source without changing it (adapters stay as they are): whatever an adapter
exposes is reported, plus what the operator states with ``snslab bridge --recording KEY=VALUE`` (e.g.
the Open Ephys record node's directory and experiment number, which its event stream does not carry).
"""

from __future__ import annotations

import json
import math
import socket


def _num(x):
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def model_neuron_identity(name: str, params: dict | None = None) -> dict[str, str | int | float | bool | None]:
    """A simulated rig's model neuron as flat keys: its name and every parameter (a user's own factory as its
    ``"package.module:callable"`` string), never the object; non-scalar values as JSON text."""
    out: dict[str, str | int | float | bool | None] = {"subject": str(name)}
    for k, v in sorted((params or {}).items()):
        out[f"subject.{k}"] = v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v, default=repr)
    return out


def recording_identity(source, stated: dict | None = None) -> dict[str, str | int | float | bool | None]:
    """Flat key -> scalar mapping (it travels in the hello's capabilities as ``recording.<key>``)."""
    out: dict[str, str | int | float | bool | None] = {"adapter": source.name, "bridge_host": socket.gethostname()}
    inlets = getattr(source, "_inlets", None)
    if isinstance(inlets, dict):  # LSL: each stream's own identity
        for role, inlet in sorted(inlets.items()):
            try:
                info = inlet.info(timeout=1.0)
            except Exception:  # a lost stream: report what we have
                continue
            out[f"{role}.name"] = info.name()
            out[f"{role}.source_id"] = info.source_id()
            out[f"{role}.hostname"] = info.hostname()
            out[f"{role}.uid"] = info.uid()
            out[f"{role}.created_at"] = _num(info.created_at())
            neuron = info.desc().child("model_neuron")  # a simulated rig's model neuron (snslab virtual-rig)
            item = neuron.first_child()
            while not neuron.empty() and not item.empty():
                out[f"{role}.{item.name()}"] = item.child_value()
                item = item.next_sibling()
    for attr in ("endpoint", "sample_rate", "stream", "spike_stream", "marker_stream", "path"):
        v = getattr(source, attr, None)
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            out[attr] = v
    streams = getattr(source, "_streams", None)
    if streams:
        out["streams"] = ",".join(sorted(streams))
    for k, v in (stated or {}).items():
        out[f"stated.{k}"] = v
    return out


def clock_model(source, bridge=None) -> dict[str, str | int | float | bool | None]:
    """The mapping in use now from the display / acquisition clocks onto the rig clock."""
    out: dict[str, str | int | float | bool | None] = {"rig_clock": source.name}
    aligner = getattr(source, "aligner", None)
    fit = getattr(aligner, "clock", None)
    if fit is not None and getattr(fit, "n", 0):
        out.update(kind="linear-fit", offset_s=_num(fit.intercept), drift=_num(fit.drift), pairs=int(fit.n),
                   residual_sd_s=_num(fit.residual_sd))
    corr = getattr(source, "clock_offsets", None)
    if isinstance(corr, dict) and corr:  # LSL: the offset of each stream's source host
        out["kind"] = out.get("kind", "lsl-time-correction")
        for role, v in sorted(corr.items()):
            out[f"{role}_correction_s"] = _num(v)
    offset = getattr(bridge, "_display_to_sim", None)
    if source.name == "sim":
        out.update(kind="offset", offset_s=_num(offset), drift=0.0)
    if getattr(source, "sample_rate", None):
        out["sample_rate"] = _num(source.sample_rate)
    return out
