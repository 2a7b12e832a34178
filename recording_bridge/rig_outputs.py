"""What ``snslab virtual-rig`` publishes, written from the formats' descriptions (not from the bridge):

- ``LslOut``: an LSL stream, irregular rate, int32, one channel per unit labelled with the unit's name in
  ``desc/channels/channel/label`` plus a ``photodiode`` channel; one sample per event time (the count of
  each unit's spikes at that time, 1 in ``photodiode`` at the screen's onset edge), timestamps on this
  host's LSL clock; an all-zero sample is a heartbeat ("everything before this time was pushed").
- ``OpenEphysOut``: the Open Ephys GUI's Event Broadcaster (JSON format): ZMQ PUB, two frames per message,
  ``[uint16 little-endian type (0 = TTL, 1 = spike), JSON]``; spikes of electrodes ``"Electrode k"`` with
  ``sorted_id`` 1, TTL events per line (``line``, ``state``) of the display's word.
"""

from __future__ import annotations

import json

TTL_TYPE, SPIKE_TYPE = 0, 1



class LslOut:
    """One labelled channel per unit plus ``photodiode``; a sample per event time, all-zero = heartbeat."""

    def __init__(self, name: str, names: list[str], source_id: str, fs: float, model_neuron: dict | None = None):
        """``model_neuron``: flat name -> value of the simulated neuron (``desc/model_neuron``), so that the
        bridge's recording identity names it (recording_bridge.provenance)."""
        import pylsl

        self._lsl, self.fs = pylsl, fs
        n = len(names) + 1
        info = pylsl.StreamInfo(name, "Spikes", n, pylsl.IRREGULAR_RATE, pylsl.cf_int32, source_id)
        chans = info.desc().append_child("channels")
        for label in [*names, "photodiode"]:
            chans.append_child("channel").append_child_value("label", label)
        if model_neuron:
            desc = info.desc().append_child("model_neuron")
            for key, value in model_neuron.items():
                desc.append_child_value(key, "" if value is None else str(value))
        self.n = n
        self.outlet = pylsl.StreamOutlet(info)

    def publish(self, events: list[tuple[int, str, object]], front: int) -> None:
        rows, stamps = [], []
        for s, kind, data in events:
            row = [0] * self.n
            if kind == "spike":
                row[data] = 1
            elif kind == "photodiode":
                row[-1] = 1
            else:
                continue
            rows.append(row)
            stamps.append(s / self.fs)
        rows.append([0] * self.n)  # heartbeat: everything before the front has been pushed
        stamps.append((front - 1) / self.fs)
        self.outlet.push_chunk(rows, stamps)


class OpenEphysOut:
    """Event Broadcaster frames: ``[uint16 LE type, JSON]``; electrodes ``Electrode k``, sorted id 1."""

    def __init__(self, endpoint: str, n_units: int, fs: float, word_lines=tuple(range(8))):
        import zmq

        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.bind(endpoint)
        self.fs, self.n_units, self.word_lines = fs, n_units, word_lines
        self.lines = {line: 0 for line in word_lines}

    def _send(self, kind: int, info: dict) -> None:
        self.sock.send_multipart([kind.to_bytes(2, "little"), json.dumps(info).encode()])

    def publish(self, events: list[tuple[int, str, object]], front: int) -> None:
        for s, kind, data in events:
            if kind == "spike":
                self._send(SPIKE_TYPE, {
                    "event_type": "spike", "stream": "virtual-rig", "source_node": 100,
                    "electrode": f"Electrode {data + 1}", "num_channels": 1, "sample_rate": self.fs,
                    "sample_number": s, "sorted_id": 1, "amp1": 80.0,
                })
            elif kind == "ttl":
                word, drop = data if data else (0, False)
                for i, line in enumerate(self.word_lines):
                    state = (word >> i) & 1
                    if state == self.lines[line]:
                        continue
                    self.lines[line] = state
                    if drop and state:
                        continue  # the rising event never arrives
                    self._send(TTL_TYPE, {"event_type": "ttl", "stream": "virtual-rig", "source_node": 100,
                                          "sample_rate": self.fs, "sample_number": s, "line": line,
                                          "state": state})

    def close(self) -> None:
        self.sock.close(linger=0)
