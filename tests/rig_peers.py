"""A scripted display and a scripted recording bridge: real wire peers over real ZeroMQ, written from
docs/protocol.md, for tests and benchmarks that need a live session without PsychoPy or a neuron model.

The display 'shows' each presentation for ``period_s`` and reports it (refresh rate, no dropped frames). The
bridge answers every reported presentation with Poisson spike counts of mean ``rate * gain`` in the response
window and of ``baseline`` in the baseline window; setting ``gain`` low is a neuron losing isolation.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from wire import Peer, Timing

FAST = Timing(heartbeat_s=0.2, heartbeat_misses=10, ack_timeout_s=0.3, max_retries=20)


class ScriptedDisplay:
    def __init__(self, address: str, client_id: str = "display-test", period_s: float = 0.05,
                 capabilities: dict | None = None):
        caps = {"refresh_hz": 60.0, "refresh_measured": True} if capabilities is None else capabilities
        self.peer = Peer(address, client_id=client_id, role="display", timing=FAST, capabilities=caps)
        self.period_s = period_s
        self.reported: set[str] = set()
        self.queue: list = []
        self.paused = False
        self.lock = threading.Lock()
        self.peer.on("stimulus_batch", self._batch)
        self.peer.on("control", self._control)
        self.peer.start()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._show, daemon=True)
        self.thread.start()

    def _batch(self, msg) -> None:
        b = msg.payload
        with self.lock:
            self.queue.extend((b, p) for p in sorted(b.presentations, key=lambda p: p.order))

    def _control(self, msg) -> None:
        if msg.payload.action in ("pause", "resume"):
            self.paused = msg.payload.action == "pause"

    def _show(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                item = self.queue.pop(0) if self.queue and not self.paused else None
            if item is None:
                time.sleep(0.01)
                continue
            b, p = item
            if p.presentation_id in self.reported:
                continue
            t = time.monotonic()
            time.sleep(self.period_s)
            self.reported.add(p.presentation_id)
            self.peer.send("presentation_report", {
                "presentation_id": p.presentation_id, "batch_id": b.batch_id, "generation": b.generation,
                "stimulus_id": p.stimulus_id, "order": p.order, "attempt": p.attempt,
                "flip_time": t, "offset_time": t + p.on_ms / 1000, "frames_on": 6, "frames_off": 6,
                "refresh_hz": 60.0, "on_duration_s": p.on_ms / 1000, "dropped_frames": 0, "marker_sent": False,
            })

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.peer.close()


class ScriptedBridge:
    def __init__(self, address: str, units: list[str], client_id: str = "bridge-test", rate: float = 80.0,
                 baseline: float = 5.0, seed: int = 0, clock_offset_s: float = 12.5):
        self.peer = Peer(address, client_id=client_id, role="bridge", timing=FAST,
                         capabilities={"needs_images": False, "adapter": "scripted"})
        self.units = list(units)
        self.rate, self.baseline, self.gain = rate, baseline, 1.0
        self.clock_offset_s = clock_offset_s
        self.rng = np.random.default_rng(seed)
        self.seq = 0
        self.answered = 0
        self.lock = threading.Lock()
        self.peer.on("presentation_report", self._report)
        self.peer.on("stimulus_batch", lambda msg: None)
        self.peer.start()

    def _report(self, msg) -> None:
        rep = msg.payload
        with self.lock:
            n = len(self.units)
            counts = self.rng.poisson(self.rate * self.gain, n).tolist()
            base = self.rng.poisson(self.baseline, n).tolist()
            self.seq += 1
            seq = self.seq
        self.peer.send("counts_batch", {"seq": seq, "units": self.units, "items": [{
            "presentation_id": rep.presentation_id, "counts": counts, "baseline_counts": base,
            "window_ms": [50.0, 200.0], "baseline_window_ms": [-100.0, 0.0],
            "onset_rig_s": rep.flip_time + self.clock_offset_s, "onset_source": "ttl", "valid": True,
        }]})
        self.answered += 1

    def close(self) -> None:
        self.peer.close()
