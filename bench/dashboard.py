"""The operator dashboard under load: a stored session of 3,000 presentations watched by 10 browsers at once.

    python bench/dashboard.py [--presentations 3000] [--viewers 10] [--live-generations 8]

Starts PostgreSQL (DATABASE_URL, else an embedded one in a temporary folder), stores an invariance session
of --presentations presentations (26 candidates + 4 reference repeats per generation, timings, responses,
scores) through the repository, runs `snslab server` in its own process, and opens the dashboard in headless
Chromium (Playwright on the system browser). Prints:

1. time to first render: navigation -> every stored generation plotted and the images shown, for one viewer
   alone (cold) and for each of --viewers opening together;
2. update latency: a generation committed to the database -> the page showing it (the progress bar's
   generation count changing, seen by a MutationObserver), median and p95 over all viewers and generations;
3. server CPU per stored generation (user + system of the server process) with one viewer and with
   --viewers, side by side: the push producer is shared, so more viewers should cost about the same.

Targets (docs/benchmarks.md): first render < 1 s, update < 500 ms, CPU with 10 viewers < 1.5 x with one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from storage import new_database, start_server  # noqa: E402

from server.db.records import PresentationTiming, Proposal, ResponseRecord, ScoreRecord  # noqa: E402
from server.db.repository import Repository  # noqa: E402
from server.png import encode_png  # noqa: E402

CANDIDATES, REFERENCES = 26, 4
TARGET_FIRST_S, TARGET_UPDATE_S, TARGET_CPU_RATIO = 1.0, 0.5, 1.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    """An invariance session written generation by generation through the repository's write path."""

    def __init__(self, repo: Repository, budget: int, seed: int = 0):
        self.repo = repo
        self.rng = np.random.default_rng(seed)
        from server.config import parse_config

        probe = parse_config({"mode": "invariance", "generations": budget, "population": CANDIDATES,
                              "stages": ["pixel"]}).model_dump(mode="json")
        self.sid = repo.create_session(
            config={"session": {"operator": "bench", "units": ["u0", "u1"]}, "probe": probe},
            seed=seed, mode="simulated", operator="bench", subject_id="m-bench", rig="bench")
        repo.add_units(self.sid, [(0, 1, "u0"), (1, 1, "u1")])
        repo.set_session_status(self.sid, "running")
        self.ref_png = encode_png(self.rng.random((32, 32, 3)))
        self.g = 0

    def add_generation(self) -> None:
        rng, g = self.rng, self.g
        props = [Proposal(self.ref_png, "reference", i) for i in range(REFERENCES)]
        props += [Proposal(encode_png(rng.random((32, 32, 3))), "candidate", REFERENCES + i,
                           code=rng.standard_normal(16), code_index=i) for i in range(CANDIDATES)]
        ids = self.repo.begin_generation(self.sid, g, props, rng.bytes(256), rng_state=rng.bit_generator.state)
        self.repo.record_timings(self.sid, [PresentationTiming(pid, "ttl", 10.0 + 0.2 * i, 10.0 + 0.2 * i + 0.004)
                                            for i, pid in enumerate(ids)])
        counts = rng.poisson(20, (len(ids), 2))
        self.repo.record_responses(self.sid, [ResponseRecord(pid, counts[i], 50.0, 200.0, rng.poisson(3, 2),
                                                             -100.0, 0.0) for i, pid in enumerate(ids)])
        scores = [ScoreRecord(pid, {"pixel": float(rng.random()), "unit": float(rng.random() * 10)},
                              0 if rng.random() < 0.3 else 1, float(rng.random()))
                  for i, pid in enumerate(ids) if i >= REFERENCES]
        self.repo.complete_generation(self.sid, g, scores, rng.bytes(256), rng_state=rng.bit_generator.state)
        self.g += 1


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


WATCH = """() => {
  window.__done = [];
  const bar = document.getElementById('progress');
  new MutationObserver(() => window.__done.push([+bar.dataset.done, Date.now()]))
    .observe(bar, { attributes: true, attributeFilter: ['data-done'] });
}"""


def rendered(n_done: int) -> str:
    return (f"document.getElementById('progress') && document.getElementById('progress').dataset.done == '{n_done}'"
            f" && document.querySelectorAll('#response-plot circle.pt-mean').length == {n_done}"
            " && document.querySelectorAll('#images img').length > 0"
            " && [...document.querySelectorAll('#images img')].every(i => i.complete)")


def open_viewer(browser, url: str, n_done: int) -> tuple[object, float]:
    ctx = browser.new_context(viewport={"width": 1440, "height": 1300})
    page = ctx.new_page()
    page.set_default_timeout(120_000)
    t0 = time.perf_counter()
    page.goto(url)
    try:
        page.wait_for_function(rendered(n_done), polling=20)
    except Exception:
        state = page.evaluate("() => [document.getElementById('notice').textContent, "
                              "document.getElementById('progress').dataset.done, "
                              "document.querySelectorAll('#response-plot circle.pt-mean').length, "
                              "document.getElementById('connection').textContent]")
        raise RuntimeError(f"the page did not render {n_done} generations: {state}") from None
    return page, time.perf_counter() - t0


def live_phase(session: Session, pages, generations: int, pid: int, pause_s: float) -> tuple[list[float], float]:
    """Store ``generations`` more generations; (latencies commit -> page over all pages, server CPU s/gen)."""
    for p in pages:
        p.evaluate(WATCH)
    commits: dict[int, float] = {}
    c0 = cpu_s(pid)
    for _ in range(generations):
        session.add_generation()
        commits[session.g] = time.time() * 1000
        time.sleep(pause_s)
    deadline = time.monotonic() + 60
    lat: list[float] = []
    for p in pages:
        while True:
            seen = {d: t for d, t in reversed(p.evaluate("window.__done"))}
            if session.g in seen or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        lat += [(seen[g] - commits[g]) / 1000 for g in commits if g in seen]
    cpu = (cpu_s(pid) - c0) / generations
    return lat, cpu


def sse_phase(session: Session, base: str, viewers: int, generations: int, pid: int, pause_s: float
              ) -> tuple[list[float], float]:
    """The same with ``viewers`` plain event-stream clients (no browser): commit -> update received."""
    import threading

    from server.client import Client

    seen: list[dict[int, float]] = [dict() for _ in range(viewers)]
    stop = threading.Event()
    ready = threading.Barrier(viewers + 1)

    def read(k: int) -> None:
        with Client(base, "bench") as c:
            first = True
            for update in c.stream(session.sid):
                if first:
                    first = False
                    ready.wait()
                seen[k].setdefault(update["detail"]["generations_done"], time.time() * 1000)
                if stop.is_set():
                    return

    for k in range(viewers):
        threading.Thread(target=read, args=(k,), daemon=True).start()
    ready.wait(timeout=120)
    commits: dict[int, float] = {}
    c0 = cpu_s(pid)
    for _ in range(generations):
        session.add_generation()
        commits[session.g] = time.time() * 1000
        time.sleep(pause_s)
    cpu = (cpu_s(pid) - c0) / generations
    stop.set()
    session.repo.log_event(session.sid, "bench", "wake the stream readers")
    return [(s[g] - commits[g]) / 1000 for s in seen for g in commits if g in s], cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presentations", type=int, default=3000, help="stored before the viewers open")
    ap.add_argument("--viewers", type=int, default=10)
    ap.add_argument("--live-generations", type=int, default=8, help="stored while the viewers watch, per phase")
    ap.add_argument("--pause", type=float, default=1.5, help="seconds between live generations (a rig's pace)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    pg, admin_url, pg_root = start_server()
    proc = None
    try:
        engine, repo = new_database(admin_url)
        per_gen = CANDIDATES + REFERENCES
        n_gens = args.presentations // per_gen
        budget = n_gens + 2 * args.live_generations + 10
        session = Session(repo, budget)
        t0 = time.perf_counter()
        for _ in range(n_gens):
            session.add_generation()
        print(f"stored {n_gens} generations, {n_gens * per_gen} presentations in {time.perf_counter() - t0:.1f} s")

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env |= {"DATABASE_URL": engine.url.render_as_string(hide_password=False), "SNSLAB_OPERATOR_TOKEN": "bench",
                "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "server", "--port", str(port), "--wire",
                                 f"tcp://127.0.0.1:{free_port()}"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=open("/tmp/bench-dash-server.log", "w"))
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/api/health", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        url = f"{base}/?session={session.sid}&access_token=bench"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
            first, cold = open_viewer(browser, url, session.g)
            lat1, cpu1 = live_phase(session, [first], args.live_generations, proc.pid, args.pause)
            # the others open together (threads would share one Playwright; open them back to back instead,
            # then measure each one's first render again with all of them connected)
            pages = [first]
            warm = []
            for _ in range(args.viewers - 1):
                page, t = open_viewer(browser, url, session.g)
                pages.append(page)
                warm.append(t)
            latn, cpun = live_phase(session, pages, args.live_generations, proc.pid, args.pause)
            browser.close()
        sse1, sse_cpu1 = sse_phase(session, base, 1, args.live_generations, proc.pid, args.pause)
        ssen, sse_cpun = sse_phase(session, base, args.viewers, args.live_generations, proc.pid, args.pause)
        stats = urllib.request.urlopen(base + "/api/push?access_token=bench", timeout=5).read().decode()

        def q(xs, f):
            return float(np.quantile(xs, f)) if xs else float("nan")

        print(f"\nsession: {session.g * per_gen} presentations at the end, {session.g} generations; "
              f"{args.viewers} viewers; one live generation every {args.pause} s")
        print(f"{'measure':<44}{'1 viewer':>12}{f'{args.viewers} viewers':>14}{'target':>12}")
        print(f"{'time to first render (s, median)':<44}{cold:>12.3f}{statistics.median(warm or [cold]):>14.3f}"
              f"{'< ' + str(TARGET_FIRST_S):>12}")
        print(f"{'time to first render (s, worst)':<44}{cold:>12.3f}{max(warm or [cold]):>14.3f}")
        print(f"{'update latency commit -> page (s, median)':<44}{q(lat1, .5):>12.3f}{q(latn, .5):>14.3f}"
              f"{'< ' + str(TARGET_UPDATE_S):>12}")
        print(f"{'update latency commit -> page (s, p95)':<44}{q(lat1, .95):>12.3f}{q(latn, .95):>14.3f}")
        print(f"{'server CPU per generation (ms)':<44}{1000 * cpu1:>12.1f}{1000 * cpun:>14.1f}"
              f"{'x' + str(TARGET_CPU_RATIO) + ' of 1':>12}")
        print(f"{'ratio (N viewers / 1 viewer)':<44}{'':>12}{cpun / cpu1 if cpu1 else float('nan'):>14.2f}")
        print("without browsers (plain event-stream clients):")
        print(f"{'update latency commit -> stream (s, median)':<44}{q(sse1, .5):>12.3f}{q(ssen, .5):>14.3f}"
              f"{'< ' + str(TARGET_UPDATE_S):>12}")
        print(f"{'update latency commit -> stream (s, p95)':<44}{q(sse1, .95):>12.3f}{q(ssen, .95):>14.3f}")
        print(f"{'server CPU per generation (ms)':<44}{1000 * sse_cpu1:>12.1f}{1000 * sse_cpun:>14.1f}"
              f"{'x' + str(TARGET_CPU_RATIO) + ' of 1':>12}")
        print(f"{'ratio (N viewers / 1 viewer)':<44}{'':>12}{sse_cpun / sse_cpu1 if sse_cpu1 else float('nan'):>14.2f}")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"updates seen: {len(lat1)} (1 viewer), {len(latn)} ({args.viewers} viewers); push feeds: {stats}")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if pg is not None:
            pg.cleanup()
        if pg_root is not None:
            shutil.rmtree(pg_root, ignore_errors=True)


if __name__ == "__main__":
    main()
