"""Hostile wire input at a fixed rate against a real ServerEndpoint in its own process: does the server's
memory stay flat and its log bounded?

The server process (``ServerEndpoint`` on loopback, logging to a file, forgetting silent clients after
``--forget-s``) is flooded for ``--seconds`` at ``--mb-per-s`` by several DEALER sockets sending a mix of
random bytes, malformed JSON, 100k-deep nesting, oversized headers, messages for unknown sessions, and
hellos from ever new client ids. Every second the server's RSS and log size are sampled; the script prints
the first and last samples side by side, their ratio, and the log lines per second. Example::

    python bench/wire_hostile.py --seconds 20 --mb-per-s 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parents[1]

SERVER = """
import logging, sys, time
sys.path.insert(0, {root!r})
logging.basicConfig(filename={log!r}, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
from wire import ServerEndpoint, Timing
srv = ServerEndpoint("tcp://127.0.0.1:*", session="S1", timing=Timing(forget_after_s={forget}))
srv.on("presentation_report", lambda msg: None)
srv.start()
print(srv.endpoint, flush=True)
while True:
    time.sleep(1)
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def hostile_messages(rng) -> list[list[bytes]]:
    """One round of the mix; each call makes new ids, so nothing is deduplicated away."""
    head = {"v": 1, "id": uuid.uuid4().hex, "type": "presentation_report", "session": "nope", "sender": "x",
            "sent_at": 0.0, "n_blobs": 0, "reliable": True, "payload": {}}
    cid = f"display-{uuid.uuid4().hex[:12]}"
    hello = {"v": 1, "id": uuid.uuid4().hex, "type": "hello", "session": "", "sender": cid, "sent_at": 0.0,
             "n_blobs": 0, "reliable": False,
             "payload": {"role": "display", "client_id": cid, "instance": uuid.uuid4().hex, "software": "x",
                         "capabilities": {}}}
    return [
        [rng.randbytes(2000)],
        [b"{not json" + rng.randbytes(500)],
        [b"[" * 100_000],
        [b'{"v": 1, "pad": "' + b"x" * (1 << 20) + b'"}'],  # over the 1 MiB header limit
        [json.dumps(head).encode()],
        [json.dumps(hello).encode(), b"extra frame"],
        [json.dumps(hello).encode()],  # a valid hello from a client never heard of again
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="how long to flood (default 20)")
    ap.add_argument("--mb-per-s", type=float, default=10.0, help="hostile input rate in MB/s (default 10)")
    ap.add_argument("--senders", type=int, default=4, help="DEALER sockets sending (default 4)")
    ap.add_argument("--forget-s", type=float, default=5.0, help="server forgets silent clients after (default 5)")
    args = ap.parse_args()
    import random

    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        proc = subprocess.Popen([sys.executable, "-c", SERVER.format(root=str(ROOT), log=str(log),
                                                                      forget=args.forget_s)],
                                stdout=subprocess.PIPE, text=True)
        try:
            address = proc.stdout.readline().strip()
            ctx = zmq.Context()
            socks = []
            for k in range(args.senders):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.ROUTING_ID, f"hostile-{k}".encode())
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.SNDHWM, 100)
                s.connect(address)
                socks.append(s)
            time.sleep(1.0)
            samples = [(0.0, rss_kib(proc.pid), 0, 0)]
            sent = 0
            start = time.monotonic()
            next_sample = start + 1.0
            budget = args.mb_per_s * 1e6
            while (now := time.monotonic()) - start < args.seconds:
                if sent > budget * (now - start):
                    time.sleep(0.001)
                else:
                    for frames in hostile_messages(rng):
                        s = socks[rng.randrange(len(socks))]
                        try:
                            s.send_multipart(frames, zmq.NOBLOCK)
                            sent += sum(len(f) for f in frames)
                        except zmq.Again:
                            pass
                if now >= next_sample:
                    lines = log.read_text(errors="replace").count("\n") if log.exists() else 0
                    samples.append((now - start, rss_kib(proc.pid), sent, lines))
                    next_sample += 1.0
            for s in socks:
                s.close(0)
            ctx.term()
        finally:
            proc.kill()
            proc.wait()
    t0, rss0, _, _ = samples[1] if len(samples) > 1 else samples[0]
    t1, rss1, sent1, lines1 = samples[-1]
    print(f"hostile input: {sent1 / 1e6:.1f} MB in {t1:.1f} s = {sent1 / 1e6 / max(t1, 1e-9):.1f} MB/s "
          f"from {args.senders} sockets")
    print(f"{'':24}{'after 1 s':>12}{'at the end':>12}{'ratio':>8}")
    print(f"{'server RSS (MiB)':24}{rss0 / 1024:12.1f}{rss1 / 1024:12.1f}{rss1 / max(rss0, 1):8.2f}")
    peak = max(r for _, r, _, _ in samples[1:]) if len(samples) > 1 else rss1
    print(f"{'server RSS peak (MiB)':24}{'':12}{peak / 1024:12.1f}{peak / max(rss0, 1):8.2f}")
    print(f"log: {lines1} lines in {t1:.0f} s = {lines1 / max(t1, 1e-9):.1f} lines/s "
          "(bound: 20 rejection lines + 1 summary per 10 s window, plus connection lines)")


if __name__ == "__main__":
    main()
