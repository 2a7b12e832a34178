"""A display process without PsychoPy, for fault-injection tests: it 'shows' every presentation for its
on+off time in real time and reports it, like ``snslab display`` (dedupe by id, reliable reports), so it
can be killed with SIGKILL and restarted by the test. Usage: python tests/scripted_display.py SERVER ID"""

import logging
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wire import Peer, Timing  # noqa: E402


log = logging.getLogger("snslab.scripted-display")


def main(server: str, client_id: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    peer = Peer(server, client_id=client_id, role="display",
                timing=Timing(max_retries=50))  # the server's heartbeat interval: no flapping under load
    queue, known, lock = [], set(), threading.Lock()

    def on_batch(msg):
        log.info("batch %s: %s", msg.payload.batch_id, [p.presentation_id for p in msg.payload.presentations])
        with lock:
            for p in sorted(msg.payload.presentations, key=lambda p: p.order):
                if p.presentation_id not in known:
                    known.add(p.presentation_id)
                    queue.append((msg.env.session, msg.payload, p))

    peer.on("stimulus_batch", on_batch)
    peer.on("control", lambda msg: None)
    peer.start()
    while True:
        with lock:
            item = queue.pop(0) if queue else None
        if item is None:
            time.sleep(0.005)
            continue
        session, b, p = item
        t = time.monotonic()
        time.sleep((p.on_ms + p.off_ms) / 1000.0)
        peer.send("presentation_report", {
            "presentation_id": p.presentation_id, "batch_id": b.batch_id, "generation": b.generation,
            "stimulus_id": p.stimulus_id, "order": p.order, "attempt": p.attempt, "flip_time": t,
            "offset_time": t + p.on_ms / 1000.0, "frames_on": 2, "frames_off": 2, "refresh_hz": 60.0,
            "on_duration_s": p.on_ms / 1000.0, "dropped_frames": 0, "marker_sent": False,
        }, session=session)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
