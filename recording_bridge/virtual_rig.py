"""``snslab virtual-rig``: the acquisition system, played by a separate process, for tests, the demo and
operator training.

It behaves like the hardware a lab connects ``snslab bridge`` to:

- it *sees the screen*: the display's flip-locked LSL markers (``pres:<id>``, on the display's LSL clock)
  and, with ``--ttl-link``, the TTL words the display writes to its serial port (a pseudo-terminal here:
  ``snslab display --ttl serial:LINK``), timestamped when they arrive, like a DAQ input;
- a model neuron (an engine subject) responds to the image actually on screen: the images come from the
  server, which sends this client every stimulus batch (it says hello as a ``monitor`` that
  ``needs_images``);
- it publishes what acquisition software would: an LSL spike stream (``--lsl NAME``: one labelled channel
  per unit, a sample per spike time, heartbeats, and a ``photodiode`` channel with the screen's onset edge)
  and/or Open Ephys Event Broadcaster frames (``--openephys tcp://...``: ZMQ PUB, ``[uint16 type, JSON]``,
  spikes of electrodes named ``"Electrode 1"`` ..., TTL line events of the display's words);
- its clock is its own: ``--clock-offset S`` runs it in a Linux time namespace (root/CAP_SYS_ADMIN), so its
  LSL ``local_clock`` really differs from the display's by S seconds (``time_correction`` sees it), with
  another host name; ``--drift-ppm`` makes its sample clock run fast or slow on top;
- faults, on request: ``--late-every N`` (LSL: the response spikes of every N-th presentation are pushed
  ``--late-ms`` after newer samples), ``--drop-ttl-every N`` (Open Ephys: the rising TTL events of every
  N-th word are lost), ``--hole-after N --hole-s S`` (nothing is published for S seconds after the N-th
  onset); ``--edge-spikes`` puts spikes of the first unit exactly on every window edge;
- it knows the truth: ``--truth FILE`` gets one JSON line per presentation with its onset on the rig
  clock, the true response and baseline counts per unit in the bridge's half-open windows, and the faults
  that touched them (``affected``), for comparison with what the server stored.

Rig time is an integer sample count at ``--sample-rate`` (30 kHz): Open Ephys sample numbers are those
samples, LSL timestamps are ``sample / rate`` seconds, so window edges are exact in both.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import math
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from snslab_common.cli import stop_requested

log = logging.getLogger("snslab.virtual_rig")

CLONE_NEWTIME, CLONE_NEWUTS = 0x00000080, 0x04000000
_IN_NAMESPACE = "SNSLAB_VIRTUAL_RIG_NS"


def _window(text: str) -> tuple[float, float]:
    try:
        a, b = (float(v) / 1000.0 for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"window {text!r}: use START,END in ms, e.g. 50,200") from None
    if not a < b:
        raise argparse.ArgumentTypeError(f"window {text!r}: START must be before END")
    return a, b


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: use NAME=VALUE")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


class _Help(argparse.HelpFormatter):
    def add_usage(self, usage, actions, groups, prefix=None):  # "Usage:" like the typer commands
        super().add_usage(usage, actions, groups, prefix or "Usage: ")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="snslab virtual-rig", formatter_class=_Help,
        description="A virtual acquisition system: a model neuron that sees the display's screen (LSL markers, "
        "TTL words) and the server's images, published as an LSL spike stream and/or Open Ephys Event "
        "Broadcaster frames, on its own clock, with optional faults; writes the true counts per window.",
    )
    p.add_argument("--server", default="tcp://127.0.0.1:5555", help="server ZeroMQ endpoint (for the images)")
    p.add_argument("--client-id", default=f"virtual-rig-{socket.gethostname()}"[:64])
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="CURVE keys (from `snslab keys init` + `snslab keys add DIR monitor ID`): DIR holds server.key "
                   "and <client-id>.key_secret")
    p.add_argument("--display-id", default=None,
                   help="client id of the display whose markers to follow (its LSL source_id; default: any)")
    p.add_argument("--marker-stream", default="snslab-markers", help="the display's marker stream name")
    p.add_argument("--lsl", default=None, metavar="NAME", help="publish an LSL spike stream with this name")
    p.add_argument("--openephys", default=None, metavar="ENDPOINT",
                   help="publish Open Ephys Event Broadcaster frames on this ZMQ PUB endpoint, e.g. tcp://127.0.0.1:5557")
    p.add_argument("--ttl-link", type=Path, default=None,
                   help="create a pseudo-terminal for the display's TTL words and link it here "
                   "(display: --ttl serial:LINK); the TTL time is when a word arrives")
    p.add_argument("--units", type=int, default=2, help="number of units (electrodes 'Electrode k', sorted id 1)")
    p.add_argument("--subject", default="complex-cell", help="model neuron (an engine subject; 'python': your own, "
                   "with --subject-param factory=package.module:callable)")
    p.add_argument("--subject-param", type=_param, action="append", default=[], help="NAME=VALUE (repeatable)")
    p.add_argument("--baseline-hz", type=float, default=8.0, help="spontaneous rate of every unit")
    p.add_argument("--latency-ms", type=float, default=50.0, help="response latency after the onset")
    p.add_argument("--response-ms", type=float, default=150.0, help="response duration")
    p.add_argument("--photodiode-lag-ms", type=float, default=4.0, help="photodiode edge after the flip (LSL)")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="sd of extra photodiode lag per presentation")
    p.add_argument("--sample-rate", type=float, default=30000.0, help="rig sample clock in Hz")
    p.add_argument("--clock-offset", type=float, default=0.0, metavar="S",
                   help="run on a clock S seconds ahead of this host's (Linux time namespace; needs root)")
    p.add_argument("--drift-ppm", type=float, default=0.0, help="sample clock drift against the host clock")
    p.add_argument("--lag-ms", type=float, default=150.0, help="data are published this long after they happen "
                   "(more than the baseline window and the marker's delivery)")
    p.add_argument("--edge-spikes", action="store_true",
                   help="spikes of the first unit exactly on every window edge of every presentation")
    p.add_argument("--late-every", type=int, default=0, metavar="N", help="LSL: every N-th presentation's "
                   "response spikes arrive late (after newer samples)")
    p.add_argument("--late-ms", type=float, default=25.0, help="how late those spikes are pushed")
    p.add_argument("--drop-ttl-every", type=int, default=0, metavar="N",
                   help="Open Ephys: the rising TTL events of every N-th word are lost")
    p.add_argument("--hole-after", type=int, default=0, metavar="N", help="a data hole after the N-th onset")
    p.add_argument("--hole-s", type=float, default=3.0, help="length of that hole (nothing is published)")
    p.add_argument("--response-window", type=_window, default=(0.05, 0.2), help="ms, for the truth (50,200)")
    p.add_argument("--baseline-window", type=_window, default=(-0.05, 0.0), help="ms, for the truth (-50,0)")
    p.add_argument("--truth", type=Path, default=None, help="write the true counts here (JSON lines)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--lsl-scope", choices=("loopback", "network"), default="loopback")
    p.add_argument("--log-level", default="INFO")
    return p


# ---------------------------------------------------------------------------------------------- clock

def enter_time_namespace(offset_s: float, hostname: str) -> None:
    """Make children of this process live on a monotonic clock ``offset_s`` ahead, on another host name."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWTIME | CLONE_NEWUTS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"--clock-offset needs a Linux time namespace (root or CAP_SYS_ADMIN): {os.strerror(err)}")
    ns = int(round(offset_s * 1e9))
    sec, nsec = divmod(ns, 1_000_000_000)
    with open("/proc/self/timens_offsets", "w") as f:
        f.write(f"monotonic {sec} {nsec}\nboottime {sec} {nsec}\n")
    socket.sethostname(hostname)


class RigClock:
    """Rig samples from this host's LSL clock: ``round((t + drift * (t - t0)) * rate)``."""

    def __init__(self, local_clock, rate: float, drift_ppm: float):
        self.local_clock, self.rate, self.drift = local_clock, float(rate), drift_ppm * 1e-6
        self.t0 = local_clock()

    def sample_at(self, local_s: float) -> int:
        return int(math.floor((local_s + self.drift * (local_s - self.t0)) * self.rate))

    def now(self) -> int:
        return self.sample_at(self.local_clock())


# ----------------------------------------------------------------------------------------- the neuron

@dataclass
class Shown:
    """One presentation as the rig saw it: onset sample, the response rate of each unit."""

    presentation_id: str
    onset: int  # sample of the onset (photodiode edge / TTL word)
    source: str
    rate: np.ndarray | None  # None until the server's image has arrived (it may trail the marker)
    index: int
    affected: list[str] = field(default_factory=list)


class VirtualRig:
    def __init__(self, args, *, local_clock, subject):
        self.args = args
        self.fs = float(args.sample_rate)
        self.clock = RigClock(local_clock, self.fs, args.drift_ppm)
        self.local_clock = local_clock
        self.subject = subject
        self.rng = np.random.default_rng(args.seed)
        self.n_units = int(args.units)
        self.names = [f"Electrode {k + 1}:1" for k in range(self.n_units)]
        self.gain = np.array([1.0 / (1 + k) for k in range(self.n_units)])
        self.base_hz = float(args.baseline_hz)
        self.lat = int(round(args.latency_ms / 1000 * self.fs))
        self.dur = int(round(args.response_ms / 1000 * self.fs))
        self.lag = int(round(args.lag_ms / 1000 * self.fs))
        self.windows = [tuple(int(round(x * self.fs)) for x in w) for w in (args.response_window, args.baseline_window)]
        self.span = (min(w[0] for w in self.windows), max(w[1] for w in self.windows))
        self.front = self.clock.now() - self.lag  # everything before this sample has been simulated
        self.images: dict[str, np.ndarray] = {}
        self.shown: list[Shown] = []
        self.n_onsets = 0
        self.markers: list[tuple[str, int, int]] = []  # (presentation id, flip sample, read sample): for a TTL
        self.words: list[tuple[int, int]] = []  # (sample, word) waiting for a marker
        self.outbox: list[tuple[int, int, str, object]] = []  # (sample, order, kind, data) in sample order
        self.late: list[tuple[int, int, int]] = []  # (due sample, spike sample, unit)
        self.pushed_until = self.front  # the front at the last publication
        self.spikes: list[tuple[int, int]] = []  # (sample, unit) kept for the truth
        self.hole: tuple[int, int] | None = None
        self.late_samples: list[int] = []  # spikes that were pushed late (for the truth)
        self.truth_file = open(args.truth, "a", buffering=1) if args.truth else None
        self.published = 0

    # ---- what the screen shows
    def add_image(self, presentation_id: str, image: np.ndarray) -> None:
        self.images[presentation_id] = image

    def _rate(self, sh: Shown, final: bool) -> np.ndarray | None:
        """The response rates to the image on screen, once its image is here (``final``: now or never)."""
        if sh.rate is None:
            img = self.images.pop(sh.presentation_id, None)
            if img is not None:
                r = float(np.asarray(self.subject.rate(img[None]), dtype=np.float64).reshape(-1)[0])
                sh.rate = self.gain * max(r, 0.0)
            elif final:
                log.warning("presentation %s: no image from the server; the neuron sees a blank screen",
                            sh.presentation_id)
                sh.rate = np.zeros(self.n_units)
        return sh.rate

    def onset(self, pid: str, sample: int, source: str, affected: tuple[str, ...] = ()) -> int:
        """The image of ``pid`` appeared at ``sample`` (rig clock); returns the onset sample."""
        sample = max(sample, self.front)  # never in the already-simulated past
        self.n_onsets += 1
        sh = Shown(pid, sample, source, None, self.n_onsets, list(affected))
        self._rate(sh, final=False)
        self.shown.append(sh)
        a = self.args
        if a.hole_after and self.n_onsets == a.hole_after:
            start = sample + self.lat  # in the middle of this presentation's response
            self.hole = (start, start + int(a.hole_s * self.fs))
            log.warning("fault: no data published for %.1f s from sample %d", a.hole_s, start)
        if self.args.edge_spikes:
            for e in sorted({sample + x for w in self.windows for x in w}):
                if e >= self.front:  # an edge already published is skipped (the stream stays in order)
                    self._emit_spike(e, 0)
        return sample

    def on_marker(self, pid: str, flip_sample: int) -> None:
        if self.args.ttl_link is None:  # the photodiode sees the flip
            jitter = self.rng.normal(0.0, self.args.jitter_ms) if self.args.jitter_ms else 0.0
            edge = flip_sample + int(round((self.args.photodiode_lag_ms + abs(jitter)) / 1000 * self.fs))
            self._queue(self.onset(pid, edge, "photodiode"), "photodiode", None)
        else:
            self.markers.append((pid, flip_sample, self.clock.now()))
            self._pair()

    def on_word(self, sample: int, word: int) -> None:
        """A byte from the display's TTL port, read at ``sample`` (this process's read time)."""
        if word == 0:
            self._queue(max(sample, self.front), "ttl", 0)
            return
        self.words.append((sample, word))
        self._pair()

    def _pair(self) -> None:
        """A TTL word and the marker of the same flip are read within a few ms of each other: pair them.
        The word went high at the flip, so its time is the marker's flip on this clock (+ 0.5 ms), as a DAQ
        input would record it, whatever the delay of this process's read. A marker without a word for
        0.3 s is an onset the rig did not see (the neuron still responds)."""
        near = int(0.25 * self.fs)
        for s, word in list(self.words):
            match = next((m for m in self.markers if abs(m[2] - s) < near), None)
            if match is None:
                continue
            self.words.remove((s, word))
            self.markers.remove(match)
            drop = bool(self.args.drop_ttl_every) and (self.n_onsets + 1) % self.args.drop_ttl_every == 0
            s = self.onset(match[0], match[1] + int(0.0005 * self.fs), "ttl", ("missing TTL word",) if drop else ())
            if drop:
                log.warning("fault: TTL word %d of presentation %s is lost", word, match[0])
            self._queue(s, "ttl", (word, drop))
        stale = self.clock.now() - int(0.3 * self.fs)
        for m in [m for m in self.markers if m[2] < stale]:
            self.markers.remove(m)
            self.onset(m[0], m[1], "marker", ("missing TTL word",))
        self.words = [w for w in self.words if w[0] >= stale]

    def _queue(self, sample: int, kind: str, data) -> None:
        self.outbox.append((sample, len(self.outbox), kind, data))

    def _emit_spike(self, sample: int, unit: int) -> None:
        self.spikes.append((sample, unit))
        self._queue(sample, "spike", unit)

    # ---- simulation
    def advance(self) -> None:
        """Simulate up to now - lag: Poisson spikes at the baseline rate plus each response."""
        end = self.clock.now() - self.lag
        if end <= self.front:
            return
        a, b = self.front, end
        cuts = {a, b}
        for sh in self.shown:
            for x in (sh.onset + self.lat, sh.onset + self.lat + self.dur):
                if a < x < b:
                    cuts.add(x)
        cuts = sorted(cuts)
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            rate = np.full(self.n_units, self.base_hz)
            for sh in self.shown:
                if sh.onset + self.lat <= lo < sh.onset + self.lat + self.dur:
                    rate = rate + self._rate(sh, final=True)
            n = self.rng.poisson(rate * (hi - lo) / self.fs)
            for u in np.flatnonzero(n):
                for s in np.sort(self.rng.integers(lo, hi, size=n[u])):
                    self._spike_or_late(int(s), int(u))
        self.front = end

    def _spike_or_late(self, sample: int, unit: int) -> None:
        every = self.args.late_every
        if every and self.args.lsl:
            for sh in self.shown[-3:]:
                if sh.index % every == 0 and sh.onset + self.lat <= sample < sh.onset + self.lat + self.dur:
                    self.spikes.append((sample, unit))
                    self.late_samples.append(sample)
                    self.late.append((sample + int(self.args.late_ms / 1000 * self.fs), sample, unit))
                    return
        self._emit_spike(sample, unit)

    def due(self) -> list[tuple[int, str, object]]:
        """Events the front has passed, in sample order (late spikes once their delay is over)."""
        ready = [e for e in self.outbox if e[0] < self.front]
        self.outbox = [e for e in self.outbox if e[0] >= self.front]
        ready.sort()
        out = [(s, k, d) for s, _, k, d in ready]
        # a late spike goes out once a sample at least late_ms newer has been published before it
        until, self.pushed_until = self.pushed_until, self.front
        late = [x for x in self.late if x[0] < until]
        if late:
            self.late = [x for x in self.late if x[0] >= until]
            out += [(s, "spike", u) for _, s, u in sorted(late)]  # after newer samples: out of order
        if self.hole is not None:
            h0, h1 = self.hole
            out = [e for e in out if not (h0 <= e[0] < h1)]
        return out

    def in_hole(self) -> bool:
        return self.hole is not None and self.hole[0] <= self.front < self.hole[1]

    # ---- truth
    def settle(self) -> None:
        """Write the truth of every presentation whose windows the front has passed."""
        keep = []
        horizon = self.front - 2 * self.lag - int(self.args.late_ms / 1000 * self.fs)
        for sh in self.shown:
            if sh.onset + self.span[1] >= horizon:
                keep.append(sh)
                continue
            self._write_truth(sh)
        self.shown = keep
        oldest = min((sh.onset + self.span[0] for sh in self.shown), default=horizon)
        self.spikes = [x for x in self.spikes if x[0] >= min(oldest, horizon) - self.fs]
        self.late_samples = [x for x in self.late_samples if x >= min(oldest, horizon) - self.fs]

    def _write_truth(self, sh: Shown) -> None:
        s = np.array([x[0] for x in self.spikes], dtype=np.int64)
        u = np.array([x[1] for x in self.spikes], dtype=np.int64)
        counts = []
        for lo, hi in self.windows:
            m = (s >= sh.onset + lo) & (s < sh.onset + hi)
            counts.append([int(np.sum(m & (u == k))) for k in range(self.n_units)])
        lo, hi = sh.onset + self.span[0], sh.onset + self.span[1]
        affected = list(sh.affected)
        if self.hole is not None and self.hole[0] < hi and self.hole[1] >= lo:
            affected.append("data gap")
        if any(lo <= x < hi for x in self.late_samples):
            affected.append("late spike")
        if self.truth_file is not None:
            self.truth_file.write(json.dumps({
                "presentation_id": sh.presentation_id, "onset_sample": sh.onset, "onset_rig_s": sh.onset / self.fs,
                "onset_source": sh.source, "units": self.names, "counts": counts[0], "baseline_counts": counts[1],
                "affected": affected,
            }) + "\n")


# ---------------------------------------------------------------------------------------------- main

def _open_pty(link: Path) -> tuple[int, int]:
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.ttyname(slave))
    os.set_blocking(master, False)
    return master, slave


def run(args) -> int:
    from wire.lsl_config import use_loopback_lsl

    if args.lsl_scope == "loopback":
        use_loopback_lsl()
    import pylsl

    from snslab_common.neurons import make_model_neuron
    from snslab_common.seeds import as_displayed
    from wire.messages import blob_to_image
    from wire.transport import Peer

    from snslab_common.errors import ConfigError

    try:
        subject = make_model_neuron(args.subject, **dict(args.subject_param))
    except ConfigError as err:  # a bad neuron name, parameter or factory: one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    rig = VirtualRig(args, local_clock=pylsl.local_clock, subject=subject)
    outputs = []
    from .rig_outputs import LslOut, OpenEphysOut

    if args.lsl:
        from .provenance import model_neuron_identity

        outputs.append(LslOut(args.lsl, rig.names, args.client_id, rig.fs,
                              model_neuron_identity(args.subject, dict(args.subject_param))))
    if args.openephys:
        outputs.append(OpenEphysOut(args.openephys, rig.n_units, rig.fs))
    if not outputs:
        print("error: say where to publish: --lsl NAME and/or --openephys ENDPOINT", file=sys.stderr)
        return 2
    pty_fds = _open_pty(args.ttl_link) if args.ttl_link else None

    inbox: queue.SimpleQueue = queue.SimpleQueue()
    keys = None
    if args.keys:
        from wire.auth import ClientKeys, KeyError_

        try:
            keys = ClientKeys.load(args.keys, args.client_id)
        except KeyError_ as err:
            print(f"error: --keys: {err}", file=sys.stderr)
            return 2
    peer = Peer(args.server, client_id=args.client_id, role="monitor",
                capabilities={"needs_images": True, "virtual_rig": True}, keys=keys)

    def on_batch(msg) -> None:
        imgs = [as_displayed(blob_to_image(b, spec)) for b, spec in zip(msg.blobs, msg.payload.images)]
        for p in msg.payload.presentations:
            inbox.put((p.presentation_id, imgs[p.image]))

    peer.on("stimulus_batch", on_batch)
    peer.on("presentation_report", lambda msg: None)
    peer.start()

    pred = f"name='{args.marker_stream}'" + (f" and source_id='{args.display_id}'" if args.display_id else "")
    resolver = pylsl.ContinuousResolver(pred=pred)
    inlet = None
    corr = 0.0
    corr_at = -math.inf
    stop = stop_requested()
    log.info("virtual rig %s: host %s, LSL clock %.3f s, units %s, publishing %s", args.client_id,
             socket.gethostname(), pylsl.local_clock(), ", ".join(rig.names),
             " and ".join(x for x in (args.lsl and f"LSL {args.lsl}", args.openephys) if x))
    print(f"virtual rig ready: host {socket.gethostname()}", flush=True)
    next_resolve = 0.0
    try:
        while not stop.is_set():
            if pty_fds is not None:
                ready, _, _ = select.select([pty_fds[0]], [], [], 0.005)
                if ready:
                    now = rig.clock.now()
                    try:
                        data = os.read(pty_fds[0], 256)
                    except BlockingIOError:
                        data = b""
                    for word in data:
                        rig.on_word(now, word)
            else:
                time.sleep(0.005)
            while True:
                try:
                    pid, img = inbox.get_nowait()
                except queue.Empty:
                    break
                rig.add_image(pid, img)
            if inlet is None and time.monotonic() >= next_resolve:
                found = resolver.results()
                next_resolve = time.monotonic() + 0.5
                if found:
                    inlet = pylsl.StreamInlet(found[0], max_buflen=60, recover=True)
                    inlet.open_stream(timeout=5.0)
                    log.info("following markers of %s on host %s", found[0].source_id(), found[0].hostname())
            if inlet is not None:
                if time.monotonic() - corr_at > 5.0:
                    try:
                        corr = inlet.time_correction(timeout=1.0)
                        corr_at = time.monotonic()
                    except pylsl.util.TimeoutError:
                        pass
                samples, stamps = inlet.pull_chunk(timeout=0.0)
                for sample, stamp in zip(samples, stamps):
                    text = sample[0]
                    if text.startswith("pres:"):
                        rig.on_marker(text[5:], rig.clock.sample_at(stamp + corr))
            rig._pair()
            rig.advance()
            if not rig.in_hole():  # a hole: nothing at all is published, not even heartbeats
                events = rig.due()
                for out in outputs:
                    out.publish(events, rig.front)
                rig.published += len(events)
            rig.settle()
            time.sleep(0.005)
    finally:
        for sh in list(rig.shown):
            rig._write_truth(sh)
        peer.close()
        for out in outputs:
            if hasattr(out, "close"):
                out.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s virtual-rig %(levelname)s %(message)s")
    if args.clock_offset and os.environ.get(_IN_NAMESPACE) != "1":
        try:
            enter_time_namespace(args.clock_offset, "virtual-rig")
        except OSError as e:
            print(f"error: {e.strerror}", file=sys.stderr)
            return 2
        child = subprocess.Popen([sys.executable, "-m", "recording_bridge.virtual_rig", *(argv or sys.argv[1:])],
                                 env={**os.environ, _IN_NAMESPACE: "1"})
        signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
        signal.signal(signal.SIGINT, lambda *_: child.send_signal(signal.SIGINT))
        return child.wait()
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
