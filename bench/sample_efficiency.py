"""Sample-efficiency of SnS methods on model neurons with exact fronts (benchmark-protocol.md).

    .venv/bin/python bench/sample_efficiency.py --quick            # minutes: 3 seeds, up to 3,000
    .venv/bin/python bench/sample_efficiency.py --full --jobs 2    # the published protocol (hours)

Every method runs through one ask/tell harness with seed-paired noise; results go to a JSON file, a
markdown table with paired statistics and a plot. ``--doc docs/benchmarks.md`` rewrites the generated
block of that page (between its markers) with the table and the exact command that produced it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


from sefficiency import stats  # noqa: E402
from sefficiency.fronts import DEFAULT_CELLS, build_instances  # noqa: E402
from sefficiency.harness import run  # noqa: E402
from sefficiency.methods import NSGA2Method, RandomSearch, ReferenceSnS  # noqa: E402
from sefficiency.snslab import BEFORE_STUDY, SnSLab  # noqa: E402
from sefficiency.zspace import Space  # noqa: E402

WINDOWS = (0.2, 0.05)  # low and high noise
QUICK_METHODS = ["reference-sepcma", "nsga2", "random-0.25", "random-0.5", "random-1", "snslab-engine", "snslab"]

FULL_METHODS = ["reference", *QUICK_METHODS]


def markers(block: str) -> tuple[str, str]:
    return f"<!-- sample-efficiency:{block}:begin -->", f"<!-- sample-efficiency:{block}:end -->"


def make_method(spec: str, inst, window_s: float, seed: int, start: str):
    """'reference' (full CMA), 'reference-sepcma', 'nsga2', 'random-<sigma>', 'snslab' or
    'snslab:key=value+key=value' (engine settings overridden, for experiments)."""
    if spec == "reference":
        return ReferenceSnS(inst, window_s, seed, "cma", start=start)
    if spec == "reference-sepcma":
        return ReferenceSnS(inst, window_s, seed, "sepcma", start=start)
    if spec.startswith("reference-sepcma:"):  # ablations, e.g. reference-sepcma:tell=projected
        kw = {k: _value(v) for k, v in (kv.split("=") for kv in spec.split(":", 1)[1].split("+"))}
        m = ReferenceSnS(inst, window_s, seed, "sepcma", start=start, **kw)
        m.name = spec
        return m
    if spec == "nsga2":
        return NSGA2Method(inst, window_s, seed, start=start)
    if spec.startswith("random-"):
        return RandomSearch(inst, window_s, seed, float(spec.removeprefix("random-")))
    if spec == "snslab-engine":  # the engine as it was before this study
        return SnSLab(inst, window_s, seed, name=spec, start=start, **BEFORE_STUDY)
    if spec == "snslab" or spec.startswith("snslab:"):  # the engine's defaults (server.config.ProbeConfig)
        overrides = {"start": start}
        if ":" in spec:
            for kv in spec.split(":", 1)[1].split("+"):
                k, v = kv.split("=")
                overrides[k] = _value(v)
        return SnSLab(inst, window_s, seed, name=spec, **overrides)
    raise SystemExit(f"--methods: unknown method {spec!r}")


def _value(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


_INSTANCES = None


def _job(args):
    cell_index, window_s, seed, spec, start, budgets, cap = args
    inst = _INSTANCES[cell_index]
    budgets = tuple(b for b in budgets if b <= cap) or budgets[:1]
    t0 = time.perf_counter()
    method = make_method(spec, inst, window_s, seed, start)
    res = run(method, inst, window_s, seed, budgets)
    rec = asdict(res)
    rec["method"] = spec
    rec["wall_s"] = time.perf_counter() - t0
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 seeds, budgets 1k/3k, sep-CMA reference")
    ap.add_argument("--full", action="store_true", help="10 seeds, budgets 1k/3k/10k, full-CMA reference")
    ap.add_argument("--seeds", type=int, help="number of paired seeds (0..k-1)")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run are first..first+seeds-1")
    ap.add_argument("--budgets", type=str, help="checkpoints in presentations, e.g. 1000,3000,10000")
    ap.add_argument("--methods", type=str, help="comma-separated method specs")
    ap.add_argument("--cells", type=str, help="comma-separated unit/probe/reference cells (default: all 8)")
    ap.add_argument("--windows", type=str, help="response windows in s (default 0.2,0.05)")
    ap.add_argument("--radius", type=float, default=128.0, help="code ball radius R")
    ap.add_argument("--start", choices=["reference", "published"], default="reference",
                    help="first mean: the reference code for both probes, or the published noise start "
                         "for invariance runs")
    ap.add_argument("--cap", action="append", default=[], metavar="METHOD=N",
                    help="run METHOD only up to N presentations (e.g. reference=3000: full CMA is slow)")
    ap.add_argument("--merge", action="append", default=[], metavar="FILE[:seeds=K][:drop=M1+M2@probe]",
                    help="add the runs of an earlier output (.json, or the .jsonl an interrupted run leaves), "
                         "same cells and radius; ':seeds=K' keeps seeds 0..K-1; ':drop=M1+M2' leaves out methods, "
                         "'M@invariance' only that method's runs of one probe. With --methods none, only "
                         "merged runs are reported")
    ap.add_argument("--note", default="", help="text put under the command line in the generated block")
    ap.add_argument("--block", default="main", help="name of the generated block in --doc")
    ap.add_argument("--comparator", default=None, help="method the claims are tested against")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--front-res", type=int, default=1200, help="exact-front sweep density")
    ap.add_argument("--out", type=str, default="bench/results/sample_efficiency", help="output prefix")
    ap.add_argument("--doc", type=str, default=None, help="markdown page whose generated block to rewrite")
    a = ap.parse_args(argv)

    seeds = a.seeds or (10 if a.full else 3)
    budgets = tuple(int(b) for b in a.budgets.split(",")) if a.budgets else (
        (1000, 3000, 10000) if a.full else (1000, 3000))
    methods = a.methods.split(",") if a.methods else (FULL_METHODS if a.full else QUICK_METHODS)
    if methods == ["none"]:
        methods = []
    windows = tuple(float(w) for w in a.windows.split(",")) if a.windows else WINDOWS
    cells = [tuple(c.split("/")) for c in a.cells.split(",")] if a.cells else DEFAULT_CELLS

    global _INSTANCES
    t0 = time.perf_counter()
    space = Space(radius=a.radius)
    _INSTANCES = build_instances(space, cells, res=a.front_res)
    print(f"exact fronts: {len(_INSTANCES)} cells in {time.perf_counter() - t0:.1f}s", flush=True)
    for inst in _INSTANCES:
        print(f"  {inst.name:32s} lambda_ref {inst.lam_ref:6.2f} Hz  HV* {inst.front.hv:.4f}", flush=True)

    caps = {k: int(v) for k, v in (c.split("=") for c in a.cap)}
    jobs = [(i, w, s, m, a.start, budgets, caps.get(m, budgets[-1])) for m in methods for i in range(len(cells)) for w in windows
            for s in range(a.first_seed, a.first_seed + seeds)]
    # seed by seed (an interrupted run still holds complete seeds), slowest methods first within a seed
    jobs.sort(key=lambda j: (j[2], j[3] != "reference", j[3] != "nsga2"))
    records = []
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(f"{out}.jsonl").open("w")  # one line per finished run, as they finish
    t0 = time.perf_counter()
    if a.jobs > 1:
        with mp.get_context("fork").Pool(a.jobs) as pool:
            for k, rec in enumerate(pool.imap(_job, jobs), 1):
                records.append(rec)
                partial.write(json.dumps(rec, default=float) + "\n")
                partial.flush()
                _progress(k, len(jobs), rec, t0)
    else:
        for k, job in enumerate(jobs, 1):
            rec = _job(job)
            records.append(rec)
            partial.write(json.dumps(rec, default=float) + "\n")
            partial.flush()
            _progress(k, len(jobs), rec, t0)
    partial.close()
    if not jobs:  # a merge-only run (--methods none) leaves no empty partial file behind
        Path(f"{out}.jsonl").unlink()

    env = " ".join(f"{k}={os.environ[k]}" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") if k in os.environ)
    command = (env + " " if env else "") + "nice -n 10 .venv/bin/python bench/sample_efficiency.py " + " ".join(
        shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv))
    for spec in a.merge:
        spec, _, drop = spec.partition(":drop=")
        path, _, keep = spec.partition(":seeds=")
        if path.endswith(".jsonl"):
            runs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        else:
            earlier = json.loads(Path(path).read_text())
            if earlier["meta"]["radius"] != a.radius:
                raise SystemExit(f"--merge {path}: radius {earlier['meta']['radius']} differs from {a.radius}")
            runs = earlier["runs"]
        if keep:
            runs = [r for r in runs if r["seed"] < int(keep)]
        if drop:  # "M" drops method M; "M@probe" only its runs of that probe (e.g. snslab@invariance)
            runs = [r for r in runs if not any(r["method"] == d.partition("@")[0] and (
                not d.partition("@")[2] or r["instance"].split("/")[1] == d.partition("@")[2])
                for d in drop.split("+"))]
        records.extend(runs)
        methods = methods + sorted({r["method"] for r in runs} - set(methods))
    meta = {"command": command, "note": a.note, "seeds": seeds, "budgets": budgets, "methods": methods, "radius": a.radius,
            "start": a.start, "wall_s": time.perf_counter() - t0,
            "run_s": sum(r.get("wall_s", 0.0) for r in records),
            "hv_star": {inst.name: inst.front.hv for inst in _INSTANCES}}
    Path(f"{out}.json").write_text(json.dumps({"meta": meta, "runs": records}, default=float))
    res = stats.Results(records)
    comparator = a.comparator or ("reference" if "reference" in methods else "reference-sepcma")
    meta["comparator"] = comparator
    table = stats.markdown(res, comparator)
    comparators = [comparator] + [m for m in ("reference", "reference-sepcma") if m in methods and m != comparator]
    claims = "\n\n".join(stats.claims_markdown(stats.claims(res, c), c) for c in comparators)
    rows = stats.claims(res, comparator)
    plot_path = f"{out}.png"
    stats.plot(res, plot_path)
    block = render_block(meta, table, claims, plot_path, a.doc, a.block)
    Path(f"{out}.md").write_text(block + "\n")
    print(block)
    if a.doc:
        write_doc(Path(a.doc), block, a.block)
    return res, rows


def render_block(meta, table, claims, plot_path, doc, name="main"):
    BEGIN, END = markers(name)
    rel = os.path.relpath(plot_path, Path(doc).parent) if doc else plot_path
    hv = ", ".join(f"{k} {v:.4f}" for k, v in meta["hv_star"].items())
    return "\n".join([
        BEGIN,
        f"Produced by `{meta['command']}` ({meta['run_s'] / 60:.0f} min of single-process run time in all; "
        f"R = {meta['radius']:g}, start = {meta['start']}).",
        *([meta["note"]] if meta.get("note") else []),
        "",
        f"HV* of the exact fronts: {hv}.",
        "",
        "Claims (pairs = units x seeds of one probe and noise level; one-sided Wilcoxon signed-rank, "
        "Holm-corrected over the four groups):",
        "",
        claims,
        "",
        "HV/HV* (mean±sd over seeds) of everything presented (found) and of the method's own reported "
        "front, at each budget; retention (lambda/lambda_ref) and stretch of the selected image at the "
        "last budget; optimizer time per generation:",
        "",
        table,
        "",
        f"![reported HV/HV* against presentations]({rel})",
        END,
    ])


def write_doc(path: Path, block: str, name: str = "main") -> None:
    BEGIN, END = markers(name)
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + block + tail)


def _progress(k, total, rec, t0):
    cp = rec["checkpoints"][-1]
    print(f"[{k}/{total} {time.perf_counter() - t0:6.0f}s] {rec['method']:18s} {rec['instance']:30s} "
          f"T={rec['window_s']:<5g} seed={rec['seed']} found {cp['hv_found']:.3f} reported "
          f"{cp['hv_reported']:.3f} ({rec['wall_s']:.1f}s)", flush=True)


if __name__ == "__main__":
    main()
