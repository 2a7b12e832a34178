"""Time the optimizers' ask+tell per generation at the reference code size (n = 4096), side by side.

All optimizer/popsize combinations run in one process, interleaved generation by generation, so they see the
same machine load. Fitness is a cheap seeded random function (a fixed random linear score plus seeded noise),
computed outside the timed region, so only optimizer time is measured. Full pycma ("cma") is slow at
n = 4096 (about 0.3 s per generation plus eigendecomposition stalls of 10+ s), so it runs fewer
generations (--cma-generations). Ratios are against the default optimizer at the same popsize.

    .venv/bin/python bench/optimizer.py                       # all optimizers, popsize 40 and 50
    .venv/bin/python bench/optimizer.py --optimizers sepcma genetic --generations 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.engine.optimizers import DEFAULT_OPTIMIZER, OPTIMIZERS, Optimizer, make_optimizer  # noqa: E402

PAUSE_S = 1.0
GOAL_P99_MS = 100.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Prints median, p99 and max ask+tell time per generation, the number of pauses > 1 s, "
        "and each optimizer's ratio to the default; then the snapshot (state()) size and time.",
    )
    parser.add_argument("--n", type=int, default=4096, help="code size (default 4096, the reference's fc7 code)")
    parser.add_argument("--popsizes", type=int, nargs="+", default=[40, 50], help="population sizes (default 40 50)")
    parser.add_argument(
        "--optimizers", nargs="+", default=["all"],
        help=f"optimizers to time: all, or some of {', '.join(sorted(OPTIMIZERS))} (default all)",
    )
    parser.add_argument("--generations", type=int, default=60, help="generations per optimizer (default 60)")
    parser.add_argument(
        "--cma-generations", type=int, default=25,
        help="generations for full pycma 'cma', which is slow at n = 4096 (default 25: enough to include its "
        "first eigendecomposition stall, due after ~16 generations at popsize 50 and ~20 at popsize 40)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the optimizers and the fitness (default 0)")
    parser.add_argument("--no-state", action="store_true", help="skip timing state()/restore() at the end")
    args = parser.parse_args(argv)
    if args.optimizers == ["all"]:
        args.optimizers = sorted(OPTIMIZERS, key=lambda name: (name != DEFAULT_OPTIMIZER, name))
    unknown = set(args.optimizers) - set(OPTIMIZERS)
    if unknown:
        parser.error(f"unknown optimizer(s) {sorted(unknown)}; choose from {sorted(OPTIMIZERS)} or all")
    return args


class Run:
    """One optimizer at one popsize, with its own seeded fitness and per-generation timings."""

    def __init__(self, name: str, popsize: int, n: int, seed: int, generations: int):
        self.name, self.popsize, self.generations = name, popsize, generations
        rng = np.random.default_rng([seed, popsize])
        self.weights = rng.standard_normal(n) / np.sqrt(n)
        self.noise = np.random.default_rng([seed, popsize, 1])
        self.opt: Optimizer = make_optimizer(name, np.zeros(n), 1.0, popsize, seed)
        self.ask_s: list[float] = []
        self.tell_s: list[float] = []

    def step(self) -> None:
        t0 = time.perf_counter()
        codes = self.opt.ask()
        t1 = time.perf_counter()
        fitness = codes @ self.weights + 0.1 * self.noise.standard_normal(self.popsize)
        t2 = time.perf_counter()
        self.opt.tell(codes, fitness)
        t3 = time.perf_counter()
        self.ask_s.append(t1 - t0)
        self.tell_s.append(t3 - t2)

    @property
    def total_ms(self) -> np.ndarray:
        return 1e3 * (np.array(self.ask_s) + np.array(self.tell_s))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runs = [
        Run(name, popsize, args.n, args.seed, args.cma_generations if name == "cma" else args.generations)
        for name in args.optimizers
        for popsize in args.popsizes
    ]
    print(f"n = {args.n}, popsizes {args.popsizes}, {args.generations} generations "
          f"({args.cma_generations} for full pycma 'cma', which is slow at this size; see --cma-generations)")
    print("timing ask+tell per generation, all runs interleaved in one process ...", flush=True)
    start = time.perf_counter()
    for g in range(max(run.generations for run in runs)):
        for run in runs:
            if g < run.generations:
                run.step()
    print(f"done in {time.perf_counter() - start:.0f} s\n")

    default = {run.popsize: run for run in runs if run.name == DEFAULT_OPTIMIZER}
    header = (f"{'optimizer':<9} {'pop':>4} {'gens':>5} {'ask med':>8} {'tell med':>9} {'median':>8} "
              f"{'p99':>8} {'max':>8} {'>1s':>4}   {'median/default':>14} {'p99/default':>11}")
    print(header + "\n" + "-" * len(header))
    for run in runs:
        t = run.total_ms
        med, p99 = np.median(t), np.percentile(t, 99)
        ref = default.get(run.popsize)
        ratio = ("", "") if ref is None else (
            f"{med / np.median(ref.total_ms):.1f}x", f"{p99 / np.percentile(ref.total_ms, 99):.1f}x"
        )
        print(f"{run.name:<9} {run.popsize:>4} {run.generations:>5} {1e3 * np.median(run.ask_s):>6.1f}ms "
              f"{1e3 * np.median(run.tell_s):>7.1f}ms {med:>6.1f}ms {p99:>6.1f}ms {t.max():>6.0f}ms "
              f"{int(np.sum(t > 1e3 * PAUSE_S)):>4}   {ratio[0]:>14} {ratio[1]:>11}")
    print("(times in ms per generation; '>1s' counts generations whose ask+tell took over 1 s)")
    for run in runs:
        pauses = np.flatnonzero(run.total_ms > 1e3 * PAUSE_S)
        if pauses.size:
            print(f"{run.name} pop {run.popsize}: pauses at generation(s) {pauses.tolist()}: "
                  + ", ".join(f"{run.total_ms[g] / 1e3:.1f} s" for g in pauses))

    for popsize, run in default.items():
        t = run.total_ms
        ok = np.percentile(t, 99) <= GOAL_P99_MS and not np.any(t > 1e3 * PAUSE_S)
        print(f"goal for default {DEFAULT_OPTIMIZER!r} at n={args.n}, pop={popsize}: p99 <= {GOAL_P99_MS:.0f} ms "
              f"and no pause > {PAUSE_S:.0f} s: {'MET' if ok else 'MISSED'} (p99 {np.percentile(t, 99):.1f} ms)")

    if not args.no_state:
        print("\nsnapshot cost (state() after the run, then Optimizer.restore()):")
        for run in runs:
            t0 = time.perf_counter()
            blob = run.opt.state()
            t1 = time.perf_counter()
            Optimizer.restore(blob)
            t2 = time.perf_counter()
            print(f"{run.name:<9} {run.popsize:>4}   {len(blob) / 2**20:>8.1f} MiB   state {1e3 * (t1 - t0):>7.1f} ms"
                  f"   restore {1e3 * (t2 - t1):>7.1f} ms")
            del blob


if __name__ == "__main__":
    main()
