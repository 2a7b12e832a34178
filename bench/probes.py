"""Do the probes beat the obvious controls on units nobody tuned them to? (issue 12)

A panel of model units generated from seeds (orientations, wavelengths, positions, pooling, mixed, seeded
random CNN units of two layers, and a colour-opponent unit written as a user's own factory,
examples/my_neuron.py), each probed for invariance and adversarially with several seeds. Prints, per unit,
whether each probe's claim held, then the shares the issue names:

- adversarial: share of runs beating every control at equal stretch (goal >= 90%), and the median ratio of
  the contrast control's stretch to the probe's at the probe's change (goal >= 1.5);
- invariance: share of runs beating every control at two-sided 90% retention (goal 100%).

    .venv/bin/python -m bench.probes                      # 60 probe generations, 40 for the maximize run
    .venv/bin/python -m bench.probes --first-seed 3       # three more seeds
    .venv/bin/python -m bench.probes --generations 20 --reference-generations 20   # the small budget

The DCT generator gets --code-size coefficients per channel (--shared-code: over all channels, the colour
units then get a third of the grey units' resolution).

Runs whose maximize never leaves baseline stop (the reference check) and are counted as such.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from server.config import parse_config
from server.engine.evaluation import max_pixel_distance
from server.engine.reference_check import ReferenceAtBaseline
from server.insilico import run_probe


def panel(image_size: int) -> list[tuple[str, dict, int]]:
    """(label, subject, generator channels) for every unit of the panel."""
    c = (image_size - 1) / 2.0
    off = image_size / 8.0
    units = [
        ("complex 30deg wl6", {"name": "complex-cell", "orientation": 30.0, "wavelength": 6.0}, 1),
        ("complex 100deg wl10", {"name": "complex-cell", "orientation": 100.0, "wavelength": 10.0}, 1),
        ("complex off-centre", {"name": "complex-cell", "orientation": 60.0, "wavelength": 7.0,
                                "centre": [c - off, c + off]}, 1),
        ("simple 45deg wl8", {"name": "simple-cell", "orientation": 45.0, "wavelength": 8.0}, 1),
        ("simple 150deg off-centre", {"name": "simple-cell", "orientation": 150.0, "wavelength": 6.0,
                                      "centre": [c + off, c]}, 1),
        ("pooled grid2 20deg", {"name": "pooled-unit", "orientation": 20.0, "wavelength": 5.0, "grid": 2}, 1),
        ("pooled grid3 120deg", {"name": "pooled-unit", "orientation": 120.0, "wavelength": 4.0}, 1),
        ("mixed 75deg a0.5", {"name": "mixed-unit", "orientation": 75.0, "wavelength": 7.0, "alpha": 0.5}, 1),
        ("mixed 170deg a2", {"name": "mixed-unit", "orientation": 170.0, "wavelength": 9.0, "alpha": 2.0}, 1),
        ("cnn resnet18 layer1 c3", {"name": "cnn-unit", "architecture": "resnet18", "layer": "layer1",
                                    "unit": [3], "input_size": 64, "seed": 11, "gain": 20.0, "baseline": 2.0}, 3),
        ("cnn resnet18 layer2 c7", {"name": "cnn-unit", "architecture": "resnet18", "layer": "layer2",
                                    "unit": [7], "input_size": 64, "seed": 12, "gain": 20.0, "baseline": 2.0}, 3),
        ("colour-opponent (own factory)", {"name": "python", "factory": "examples.my_neuron:make",
                                           "orientation": 135.0}, 3),
    ]
    return units


def presented_winner(result) -> bool:
    """Whether any image the invariance probe presented (every candidate its confirmation remembers) beats
    every control noise-free (pixel stretch, as the panel's probes), i.e. whether a perfect choice of the reported image would have won: tells a
    search that never got there from a selection that missed what it found."""
    conf = result.phases[-1].search.confirmation
    if conf is None or not conf.codes:
        return False
    c = result.evaluation["controls"]
    ref = np.asarray(result.reference_image, dtype=np.float32)
    images = result.generator.render(np.stack(list(conf.codes.values())))
    ret = result.subject.rate(images).mean(axis=1) / max(float(result.subject.rate(ref[None]).mean()), 1e-12)
    stretch = np.linalg.norm((images.astype(np.float64) - ref[None]).reshape(len(images), -1), axis=1) \
        / max_pixel_distance(ref)
    ok = (np.abs(ret - 1.0) <= c["tolerance"]) & (stretch > max(c["farthest_kept"].values()))
    return bool(ok.any())


def run(args) -> dict:
    rows = []
    for label, subject, channels in panel(args.image_size):
        if args.units and not any(u.lower() in label.lower() for u in args.units):
            continue
        for mode in args.modes:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                cfg = {
                    "mode": mode, "seed": seed, "population": args.population, "generations": args.generations,
                    "stages": ["pixel"], "output": "runs/bench-probes",
                    "generator": {"name": "dct", "code_size": args.code_size * (1 if args.shared_code else channels),
                                  "image_size": args.image_size, "channels": channels},
                    "subject": subject, "reference": {"source": "maximize",
                                                      "generations": args.reference_generations or args.generations},
                }
                for key in ("far_restart", "far_seed_repeats", "verify_repeats", "verify_budget"):
                    if getattr(args, key) is not None and (mode == "invariance" or not key.startswith("far")):
                        cfg[key] = getattr(args, key)
                if mode == "adversarial":  # (the engine's default: the shell search, server/engine/adversarial.py)
                    cfg["generations"] = args.adversarial_generations or args.generations
                row = {"unit": label, "mode": mode, "seed": seed}
                try:
                    result = run_probe(parse_config(cfg))
                    ev = result.evaluation
                except ReferenceAtBaseline:
                    row["stopped"] = "reference at baseline"
                    rows.append(row)
                    print(f"{label:<30} {mode:<11} seed {seed}: stopped, reference at baseline", flush=True)
                    continue
                c = ev["controls"]
                row |= {"claim_holds": ev["claim_holds"], "beats": c["beats"], "retention": ev["retention"],
                        "stretch": ev["stretch"], "ratio": c.get("contrast_to_probe_stretch_ratio"),
                        "reached_target": c.get("reached_target"), "tolerance": c.get("tolerance"),
                        "presentations": ev["presentations"],
                        "verify_presentations": (ev.get("verification") or {}).get("presentations", 0),
                        "verified": ((ev.get("verification") or {}).get("chosen") or {}),
                        "reference_rate_hz": ev.get("reference_rate_hz"),
                        "verify_reference_hz": (ev.get("verification") or {}).get("reference_rate_hz")}
                if mode == "invariance":
                    row["presented_winner"] = presented_winner(result)
                rows.append(row)
                print(f"{label:<30} {mode:<11} seed {seed}: claim {'true ' if ev['claim_holds'] else 'false'} "
                      f"retention {ev['retention']:.2f} stretch {ev['stretch']:.3f} beats {c['beats']}", flush=True)
    return {"args": vars(args), "rows": rows}


def report(res: dict) -> str:
    rows = res["rows"]
    out = []
    for mode in ("adversarial", "invariance"):
        rs = [r for r in rows if r["mode"] == mode]
        if not rs:
            continue
        ran = [r for r in rs if "stopped" not in r]
        share = np.mean([r["claim_holds"] for r in ran]) if ran else float("nan")
        out.append(f"{mode}: {len(rs)} runs, {len(rs) - len(ran)} stopped at the reference check; "
                   f"beats every control in {sum(r['claim_holds'] for r in ran)}/{len(ran)} ({share:.0%})"
                   + (" (goal >= 90%)" if mode == "adversarial" else " (goal 100%)"))
        if mode == "adversarial":
            ratios = [r["ratio"] for r in ran if r["ratio"] is not None]
            halved = [r for r in ran if r["reached_target"]]
            out.append(f"  median contrast/probe stretch ratio at the probe's change: "
                       f"{np.median(ratios) if ratios else float('nan'):.2f} over {len(ratios)} runs (goal >= 1.5); "
                       f"response halved in {len(halved)}/{len(ran)}")
            halved_ratios = [r["ratio"] for r in halved if r["ratio"] is not None]
            out.append(f"  median ratio over the runs that halved it: "
                       f"{np.median(halved_ratios) if halved_ratios else float('nan'):.2f}")
        if mode == "invariance" and ran:
            lost = [r for r in ran if not r["claim_holds"]]
            outside = [r for r in lost if abs(r["retention"] - 1.0) > r.get("tolerance", 0.1)]
            out.append(f"  lost: {len(outside)} with the reported image outside the band, "
                       f"{len(lost) - len(outside)} in the band but nearer than a control "
                       f"({', '.join(sorted({r['unit'] for r in lost if r not in outside})) or '-'})")
            found = [r for r in ran if r.get("presented_winner")]
            out.append(f"  some presented image beats every control (noise-free) in {len(found)}/{len(ran)}; "
                       f"found but not reported in {sum(not r['claim_holds'] for r in found)}")
        if ran:
            out.append(f"  presentations per probe (median): {np.median([r['presentations'] for r in ran]):.0f}, "
                       f"plus {np.median([r['verify_presentations'] for r in ran]):.0f} to verify the reported image")
        for fam in ("contrast", "noise", "affine"):
            won = [r["beats"][fam] for r in ran]
            out.append(f"  beats {fam}: {sum(won)}/{len(won)}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per unit and probe")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--generations", type=int, default=60,
                    help="of each probe (about 1,500-1,800 presentations; 20: the small budget)")
    ap.add_argument("--population", type=int, default=12)
    ap.add_argument("--modes", nargs="+", default=["invariance", "adversarial"],
                    choices=["invariance", "adversarial"], help="which probes to run (e.g. --modes adversarial)")
    ap.add_argument("--reference-generations", type=int, default=40, help="of the maximize run")
    ap.add_argument("--adversarial-generations", type=int, default=None,
                    help="of each adversarial probe (default: --generations)")
    ap.add_argument("--units", nargs="+", default=None,
                    help="run only the units whose label contains one of these words (e.g. --units cnn)")
    ap.add_argument("--far-restart", type=int, default=None,
                    help="invariance: far-reach bands restart from the confirmed front after this many generations, "
                         "with the reference's affine copies and windows as seeds (server/engine/far_reach.py; "
                         "the engine's default: 6; 0: only the four transforms as seeds, no restart)")
    ap.add_argument("--far-seed-repeats", type=int, default=None,
                    help="invariance: showings of each far-reach seed in the first generation "
                         "(the engine's default: 3)")
    ap.add_argument("--verify-repeats", type=int, default=None,
                    help="fresh showings a verified image needs to pass (the engine's default: 128; "
                         "server/engine/verify.py)")
    ap.add_argument("--verify-budget", type=int, default=None,
                    help="fresh showings the verification may spend in all (the engine's default: 768)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--code-size", type=int, default=256)
    ap.add_argument("--shared-code", action="store_true",
                    help="--code-size coefficients over all generator channels (the colour units then get a third of "
                         "the grey units' spatial resolution; the default gives --code-size per channel)")
    ap.add_argument("--json", type=Path, default=None, help="also write every run's numbers here")
    args = ap.parse_args()
    res = run(args)
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
