"""The real display client (PsychoPy under Xvfb, in a subprocess) against a fake server built from
wire.ServerEndpoint + wire.PresentationLedger: presentations, flip times, LSL markers, bad input, a
kill -9 mid-batch and a server restart mid-batch, each ending with every presentation reported once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import zmq
from display_fixtures import DisplayProcess, display_env, requires_display_stack, xvfb  # noqa: F401
from waiting import wait_for

from wire import messages as m
from wire.ledger import PresentationLedger
from wire.transport import ServerEndpoint, Timing

pytestmark = [requires_display_stack, pytest.mark.slow]

TIMING = Timing(heartbeat_s=0.3, heartbeat_misses=4)


class FakeServer:
    """What the real server does for a display: dispatch through the ledger, record reports exactly once,
    re-send everything outstanding on every hello."""

    def __init__(self, port: int | None = None, ledger: PresentationLedger | None = None):
        self.ledger = ledger or PresentationLedger()
        self.reports: list[m.PresentationReport] = []
        self.statuses: list[str] = []
        self.hellos: list[tuple] = []
        self.resent: list[list[str]] = []
        deadline = time.monotonic() + 10.0
        while True:  # a restart on the same port: ZeroMQ releases the old listener asynchronously
            try:
                self.ep = ServerEndpoint(
                    f"tcp://127.0.0.1:{port or '*'}", session="S1", timing=TIMING, on_hello=self._on_hello
                )
                break
            except zmq.ZMQError:
                if port is None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.ep.on("presentation_report", self._on_report)
        self.ep.start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.ep.port}"

    def _on_hello(self, client, new_instance):
        self.hellos.append((client, new_instance))
        for b, blobs in self.ledger.outstanding_batches():
            self.resent.append([p.presentation_id for p in b.presentations])
            self.ep.send_to(client.client_id, "stimulus_batch", b, blobs)

    def _on_report(self, msg):
        self.reports.append(msg.payload)
        self.statuses.append(self.ledger.record(msg.payload))

    def dispatch(self, client_id: str, batch: m.StimulusBatch, images) -> None:
        blobs = [m.image_to_blob(i) for i in images]
        self.ledger.add_batch(batch, blobs)
        self.ep.send_to(client_id, "stimulus_batch", batch, blobs)

    def raw(self, client_id: str, frames) -> None:
        """Put arbitrary frames on the wire to the client (bad-input tests)."""
        self.ep._post(lambda: self.ep._send_frames(client_id, list(frames)))

    def close(self) -> None:
        self.ep.close()


def six_images(batch_id="g0"):
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    images = [np.tile(np.array(c, np.uint8), (16, 16, 1)) for c in colors]
    batch = m.StimulusBatch(
        batch_id=batch_id, generation=3, images=[m.ImageSpec.of(f"s{i}", im) for i, im in enumerate(images)],
        presentations=[
            m.Presentation(presentation_id=f"{batch_id}-p{i}", stimulus_id=f"s{i}", image=i, order=i) for i in range(6)
        ],
    )  # fmt: skip
    return batch, images


def client_args(endpoint: str, client_id: str, *extra: str) -> list[str]:
    return ["--server", endpoint, "--client-id", client_id, "--windowed", "--size", "320x240",
            "--heartbeat", str(TIMING.heartbeat_s), "--flush-s", "10", *extra]  # fmt: skip


@pytest.fixture
def cleanup():
    items = []
    yield items.append
    for it in reversed(items):
        it.close()


def start_client(display_env, tmp_path, cleanup, endpoint, client_id, *extra) -> DisplayProcess:
    proc = DisplayProcess(display_env, client_args(endpoint, client_id, *extra), tmp_path / f"{client_id}.log")
    cleanup(proc)
    return proc


def stop_client(srv: FakeServer, proc: DisplayProcess, client_id: str) -> None:
    srv.ep.send_to(client_id, "control", {"action": "stop", "reason": "test over"})
    assert proc.wait(timeout=60) == 0, proc.log()
    assert "Traceback" not in proc.log(), proc.log()


def test_psychopy_renders_images_upright_with_the_photodiode_patch(display_env):
    code = r"""
import json, numpy as np
from stimulus_client.display import Display, DisplayOptions
from stimulus_client.schedule import QueuedBatch
d = Display(DisplayOptions(size=(200, 160), refresh_hz=60.0, photodiode="bottom-right", photodiode_size=20,
                           fixation=True, fixation_size=10))
img = np.zeros((40, 60, 3), np.uint8); img[:20] = (255, 0, 0); img[20:] = (0, 0, 255)
stim = d.preload(QueuedBatch("S1", "b", 0, [img], []))[0]
stim.draw(); d._draw_overlay(True)
f = np.asarray(d.win.getMovieFrame(buffer="back"))  # what the next flip shows (Xvfb's front buffer reads black)
d.win.flip()
out = dict(shape=f.shape, above=f[70, 100].tolist(), below=f[90, 100].tolist(), centre=f[83, 100].tolist(),
           corner=f[155, 195].tolist(), corner_tl=f[5, 5].tolist(), outside=f[80, 20].tolist())
d._draw_overlay(False)
out["corner_off"] = np.asarray(d.win.getMovieFrame(buffer="back"))[155, 195].tolist()
d.win.flip()
import sys; bad = [m for m in ("torch", "fastapi", "sqlalchemy") if m in sys.modules]
out["bad"] = bad
print("RESULT", json.dumps(out)); d.close()
"""
    out = subprocess.run([sys.executable, "-c", code], env=display_env, capture_output=True, text=True, timeout=180)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert out.returncode == 0 and line, out.stdout + out.stderr
    r = json.loads(line[0][7:])
    assert r["shape"][:2] == [160, 200]
    assert r["above"] == [255, 0, 0] and r["below"] == [0, 0, 255]  # top row of the array is on top
    assert r["centre"] == [255, 0, 0]  # the red fixation point covers the blue half just below the centre
    assert r["corner"] == [255, 255, 255] and r["corner_off"] == [0, 0, 0]  # photodiode patch on/off
    assert all(abs(v - 128) <= 1 for v in r["outside"] + r["corner_tl"])  # mid-grey background
    assert r["bad"] == []


def test_client_presents_a_batch_reports_each_once_and_marks_lsl(display_env, tmp_path, cleanup):
    import pylsl

    srv = FakeServer()
    cleanup(srv)
    proc = start_client(
        display_env, tmp_path, cleanup, srv.endpoint, "display-t1",
        "--frames-on", "3", "--frames-off", "2", "--fixation", "--photodiode-patch", "bottom-right:20",
    )  # fmt: skip
    assert wait_for(lambda: srv.hellos or proc.proc.poll() is not None), proc.log()
    client, new_instance = srv.hellos[0]
    assert new_instance and client.role == "display" and client.client_id == "display-t1"
    caps = client.capabilities
    assert caps["refresh_hz"] > 0 and caps["lsl_markers"] is True and caps["photodiode"] == "bottom-right"
    assert caps["frames_on"] == 3 and caps["width"] == 320 and caps["height"] == 240

    streams = pylsl.resolve_byprop("source_id", "display-t1", timeout=30)
    assert len(streams) == 1 and streams[0].name() == "snslab-markers" and streams[0].type() == "Markers"
    inlet = pylsl.StreamInlet(streams[0])
    inlet.open_stream(timeout=30)

    # bad input first: each is refused with one log line, and the client carries on
    batch, images = six_images()
    good = m.encode(m.Envelope.make("stimulus_batch", batch, session="S1", sender="server"), images)
    head = json.loads(good[0])

    def variant(frames_tail=None, **changes):
        return [json.dumps({**head, "id": uuid.uuid4().hex, **changes}).encode(), *(good[1:] if frames_tail is None else frames_tail)]

    nan_payload = json.loads(json.dumps(head["payload"]))
    nan_payload["presentations"][0]["on_ms"] = float("nan")
    bad = [
        ([b"{garbage"], "header: malformed JSON"),
        (variant(type="teleport"), "type: unknown message type 'teleport'"),
        (variant(frames_tail=[*good[1:-1], b"\x00" * 5]), "blob[5]: 5 bytes but 16x16x3 uint8 needs 768"),
        (variant(session="S0"), "session: unknown session 'S0'"),
        (variant(payload=nan_payload), "payload.presentations[0].on_ms: Input should be a finite number"),
        (variant(frames_tail=good[1:3]), "n_blobs: header says 6 binary frames, got 2"),
    ]
    for frames, _ in bad:
        srv.raw("display-t1", frames)
    # paused: the batch is taken (acknowledged) but nothing is shown until resume
    srv.ep.send_to("display-t1", "control", {"action": "pause"})
    srv.dispatch("display-t1", batch, images)
    assert wait_for(lambda: srv.ep.pending_count() == 0), proc.log()
    time.sleep(0.5)
    assert srv.reports == []
    srv.ep.send_to("display-t1", "control", {"action": "resume"})
    assert wait_for(lambda: srv.ledger.complete or proc.proc.poll() is not None), proc.log()

    markers = []
    while len(markers) < 6:
        sample, ts = inlet.pull_sample(timeout=30)
        assert sample is not None, f"only {len(markers)} markers"
        markers.append((sample[0], ts))

    ids = [p.presentation_id for p in batch.presentations]
    assert srv.statuses == ["new"] * 6 and [r.presentation_id for r in srv.reports] == ids
    reps = srv.reports
    assert all(r.frames_on == 3 and r.frames_off == 2 and r.marker_sent and r.photodiode_patch for r in reps)
    assert all(r.refresh_hz == pytest.approx(caps["refresh_hz"], abs=1e-3) and r.generation == 3 for r in reps)
    assert all(r.offset_time > r.flip_time and r.on_duration_s == pytest.approx(r.offset_time - r.flip_time) for r in reps)
    assert np.all(np.diff([r.flip_time for r in reps]) > 0)
    assert np.all(np.diff([r.flip_time_lsl for r in reps]) > 0)
    assert all(isinstance(r.dropped_frames, int) and r.dropped_frames >= 0 for r in reps)
    assert [r.stimulus_id for r in reps] == [f"s{i}" for i in range(6)] and all(r.attempt == 0 for r in reps)
    # the marker is the flip-locked event: its LSL timestamp is the reported onset on the LSL clock
    assert [t for t, _ in markers] == [f"pres:{i}" for i in ids]
    assert [ts for _, ts in markers] == pytest.approx([r.flip_time_lsl for r in reps], abs=1e-6)

    log = proc.log()
    rejected = [ln for ln in log.splitlines() if " rejected " in ln]
    assert len(rejected) == len(bad), log
    for (_, reason), line in zip(bad, rejected):
        assert reason in line
    stop_client(srv, proc, "display-t1")


def test_kill9_mid_batch_then_restart_completes_with_nothing_lost_or_doubled(display_env, tmp_path, cleanup):
    srv = FakeServer()
    cleanup(srv)
    args = ("--frames-on", "20", "--frames-off", "5", "--no-lsl-markers")
    first = start_client(display_env, tmp_path, cleanup, srv.endpoint, "display-k", *args)
    assert wait_for(lambda: srv.hellos or first.proc.poll() is not None), first.log()
    batch, images = six_images()
    srv.dispatch("display-k", batch, images)
    assert wait_for(lambda: len(srv.reports) >= 2 or first.proc.poll() is not None, step_s=0.001), first.log()
    first.kill9()
    before = set(srv.ledger.reports)
    outstanding = srv.ledger.outstanding()
    assert outstanding, "the client finished before it was killed; the test needs a longer batch"

    second = start_client(display_env, tmp_path, cleanup, srv.endpoint, "display-k", *args)
    assert wait_for(lambda: srv.ledger.complete or second.proc.poll() is not None), second.log()

    ids = [p.presentation_id for p in batch.presentations]
    assert sorted(srv.ledger.reports) == sorted(ids)  # nothing lost
    assert srv.statuses.count("new") == 6 and srv.statuses.count("unknown") == 0  # nothing doubled
    assert [new for _, new in srv.hellos] == [True, True]  # the restarted process announced itself
    assert srv.resent == [outstanding]  # and got exactly what was outstanding
    after = {r.presentation_id for r, s in zip(srv.reports, srv.statuses) if s == "new"} - before
    # re-delivered under the same ids and attempt: showing a slot again as a new stored attempt is the live
    # loop's decision (tests/test_crash_only_live.py), not the transport's
    assert after == set(outstanding) and all(srv.ledger.reports[p].attempt == 0 for p in after)
    assert all(srv.ledger.reports[p].attempt == 0 for p in before)
    stop_client(srv, second, "display-k")


def test_server_restart_mid_batch_client_carries_on_without_reshowing(display_env, tmp_path, cleanup):
    first = FakeServer()
    port = first.ep.port
    proc = start_client(display_env, tmp_path, cleanup, first.endpoint, "display-r", "--frames-on", "20", "--frames-off", "5", "--no-lsl-markers")
    assert wait_for(lambda: first.hellos or proc.proc.poll() is not None), proc.log()
    batch, images = six_images()
    first.dispatch("display-r", batch, images)
    assert wait_for(lambda: len(first.reports) >= 2 or proc.proc.poll() is not None, step_s=0.001), proc.log()
    first.close()  # the server dies; its ledger survives (the real one lives in the database)
    second = FakeServer(port=port, ledger=first.ledger)
    cleanup(second)
    assert wait_for(lambda: second.ledger.complete or proc.proc.poll() is not None), proc.log()
    statuses = first.statuses + second.statuses
    assert statuses.count("new") == 6 and sorted(second.ledger.reports) == sorted(p.presentation_id for p in batch.presentations)
    # the client already held every presentation: the re-sent copies were skipped, nothing shown twice
    assert all(r.attempt == 0 for r in first.reports + second.reports)
    assert second.hellos and "already held" in proc.log()
    stop_client(second, proc, "display-r")
