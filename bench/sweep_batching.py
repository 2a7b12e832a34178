"""N in-silico probes of CNN units run one after another vs together (a sweep's ``batch_probes = N``: their
network calls batched in shared passes, server/engine/lockstep.py), side by side in one run.

Each probe is a full `snslab insilico` run (maximize for the reference, then an invariance or adversarial
probe, evaluation with its controls) of a unit of one network with seeded random weights (nothing is
downloaded). Networks are built before the clock starts, for both ways alike, so the figures compare the
runs, not model loading (and one untimed probe warms the kernels up first). Reported: generations/s (all
phases), images/s through the network, the share of the time spent in the network's passes (the rest is
each probe's own work: optimizer, scoring, controls), and the ratio together / one after another; each
figure the median of --repeats runs (the share from the first). No database: see docs/benchmarks.md. The grouped probes' results are
checked to equal the separate ones (responses of every generation, the selected codes).

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 nice .venv/bin/python bench/sweep_batching.py      # CPU, ~2 min
    .venv/bin/python bench/sweep_batching.py --device cuda --input-size 224 --population 40     # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--probes", type=int, nargs="+", default=[1, 4, 8], help="group sizes N (1 4 8)")
    p.add_argument("--architecture", default="resnet18", help="torchvision model of the units (resnet18)")
    p.add_argument("--layer", default="layer2", help="the units' layer (layer2)")
    p.add_argument("--input-size", type=int, default=64, help="network input side in pixels (64)")
    p.add_argument("--image-size", type=int, default=32, help="generated image side (32)")
    p.add_argument("--population", type=int, default=20, help="images per generation (20)")
    p.add_argument("--generations", type=int, default=6, help="generations of the probe and of maximize (6)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (cpu)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per figure, median reported (1)")
    return p.parse_args(argv)


def configs(args, n: int):
    from server.config import parse_config

    out = []
    for i in range(n):
        out.append(parse_config({
            "mode": ("invariance", "adversarial")[i % 2], "seed": i, "population": args.population,
            "generations": args.generations, "retests": 2, "stages": ["pixel"],
            "generator": {"name": "dct", "code_size": 64, "image_size": args.image_size, "channels": 1},
            "reference": {"source": "maximize", "generations": args.generations, "check_repeats": 0},
            "subject": {"name": "cnn-unit", "architecture": args.architecture, "layer": args.layer,
                        "input_size": args.input_size, "unit": [i], "gain": 20.0, "seed": 1, "device": args.device},
            "output": "unused"}))
    return out


class Counted:
    """Counts the rows of every forward pass of a network (the model's own ``_pass``)."""

    def __init__(self):
        self.rows = 0
        self.seconds = 0.0  # in the network's passes

    def wrap(self, stage):
        real = stage._pass

        def counted(x):
            t0 = time.perf_counter()
            self.rows += len(x)
            y = real(x)
            self.seconds += time.perf_counter() - t0
            return y

        stage._pass = counted


class Prebuilt:
    """The models of one-after-another runs: built once (the same network for every probe), no batching."""

    def __init__(self, counter: Counted):
        self.counter = counter
        self.stage = None

    def build_generator(self, config):
        from server.probe_setup import build_generator

        return build_generator(config)

    def build_subject(self, config, generator):
        from server.engine.subjects import CNNUnit, make_subject

        params = config.subject.params
        if self.stage is None:
            self.stage = make_subject("cnn-unit", **params).stage
            self.counter.wrap(self.stage)
        return CNNUnit.on_stage(self.stage, unit=params["unit"], gain=params["gain"])

    def build_stages(self, config):
        from server.probe_setup import build_stages

        return build_stages(config)


def run_separately(cfgs):
    from server.insilico import run_probe

    counter = Counted()
    models = Prebuilt(counter)
    models.build_subject(cfgs[0], None)  # the network, before the clock
    t0 = time.perf_counter()
    results = [run_probe(c, models=models) for c in cfgs]
    return time.perf_counter() - t0, counter, results


def run_grouped(cfgs):
    from server.engine.lockstep import Lockstep
    from server.insilico import run_probe
    from server.sweep.group import SharedModels, run_together

    counter = Counted()
    built = SharedModels(Lockstep(0))
    counter.wrap(built.build_subject(cfgs[0], None).stage._model)  # the network, before the clock
    t0 = time.perf_counter()
    results, lockstep = run_together(len(cfgs), lambda i, models: run_probe(cfgs[i], models=models), like=built)
    elapsed = time.perf_counter() - t0
    for r in results:
        if isinstance(r, Exception):
            raise r
    return elapsed, counter, results, lockstep


def generations(results) -> int:
    return sum(len(p.reports) for r in results for p in r.phases)


def same(a, b) -> bool:
    return all(np.array_equal(ra.responses, rb.responses) for x, y in zip(a, b) for pa, pb in zip(x.phases, y.phases)
               for ra, rb in zip(pa.reports, pb.reports)) and \
        all(np.array_equal(x.probe.selection.code, y.probe.selection.code) for x, y in zip(a, b))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    print(f"torch {torch.__version__}; CPU threads {torch.get_num_threads()}; device {args.device}; "
          f"{args.architecture} {args.layer} at {args.input_size} px; {args.population} images per generation, "
          f"{args.generations} generations per phase")
    print(f"{'N':>3} {'way':<20} {'seconds':>8} {'generations/s':>14} {'images/s':>9} {'in network':>10} "
          f"{'passes':>7} {'exact':>6}")
    import warnings

    # a unit silent on its reference has a NaN retention: no matter here (numpy's own switch is per thread)
    warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
    ratios = []
    run_separately(configs(args, 1))  # untimed warm-up: the first passes of each shape set up their kernels
    for n in args.probes:
        cfgs = configs(args, n)
        sep, grp = [], []
        for _ in range(args.repeats):
            sep.append(run_separately(cfgs))
            grp.append(run_grouped(cfgs))
        t_sep = statistics.median(s[0] for s in sep)
        t_grp = statistics.median(g[0] for g in grp)
        rows_sep, rows_grp = sep[0][1].rows, grp[0][1].rows
        share_sep, share_grp = sep[0][1].seconds / sep[0][0], grp[0][1].seconds / grp[0][0]
        gens = generations(sep[0][2])
        exact = same(sep[0][2], grp[0][2])
        lockstep = grp[0][3]
        print(f"{n:>3} {'one after another':<20} {t_sep:>8.2f} {gens / t_sep:>14.2f} {rows_sep / t_sep:>9.1f} "
              f"{share_sep:>10.0%} {'':>7} {'':>6}")
        print(f"{n:>3} {'together (batched)':<20} {t_grp:>8.2f} {gens / t_grp:>14.2f} {rows_grp / t_grp:>9.1f} "
              f"{share_grp:>10.0%} {lockstep.passes:>7} {'yes' if exact else 'NO':>6}")
        ratios.append((n, t_sep / t_grp))
    print("\ngenerations/s together vs one after another, same run: "
          + ", ".join(f"N={n} x{r:.2f}" for n, r in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
