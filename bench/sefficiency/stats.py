"""Paired statistics, the markdown table and the plot.

Tests are one-sided Wilcoxon signed-rank tests (scipy.stats.wilcoxon) on seed-paired differences, pooled
over the four units of a (probe, noise) group, with Holm's correction within each family of claims.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.stats import wilcoxon

RANDOM_PREFIX = "random-"


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    order = np.argsort(p)
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


def paired_greater(a: np.ndarray, b: np.ndarray) -> float:
    """p-value of the one-sided Wilcoxon test that a > b (pairs with zero difference dropped)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if np.count_nonzero(d) == 0:
        return 1.0
    return float(wilcoxon(d, alternative="greater", zero_method="wilcox").pvalue)


class Results:
    """Index over run records (dicts as written to the JSON file)."""

    def __init__(self, records: list[dict]):
        self.records = records
        self.by = defaultdict(dict)  # (instance, window) -> method -> seed -> record
        for r in records:
            self.by[(r["instance"], r["window_s"])].setdefault(r["method"], {})[r["seed"]] = r
        self._resolve_random()

    def _resolve_random(self):
        """'random' = the best sigma per cell (highest mean reported HV/HV* at the last checkpoint)."""
        self.random_sigma = {}
        for key, methods in self.by.items():
            cands = [m for m in methods if m.startswith(RANDOM_PREFIX)]
            if not cands:
                continue
            best = max(cands, key=lambda m: np.mean([r["checkpoints"][-1]["hv_reported"] for r in methods[m].values()]))
            methods["random"] = methods[best]
            self.random_sigma[key] = best.removeprefix(RANDOM_PREFIX)

    @property
    def cells(self):
        return sorted(self.by, key=lambda k: (k[0].split("/")[1], k[0], -k[1]))

    @property
    def methods(self):
        names = {m for v in self.by.values() for m in v if not m.startswith(RANDOM_PREFIX)}
        order = ["reference", "reference-sepcma", "nsga2", "random", "snslab"]
        return [m for m in order if m in names] + sorted(names - set(order))

    def budgets(self, method: str | None = None, every_run: bool = False):
        """Checkpoint budgets present in any run (of ``method``, if given), or with ``every_run`` in all of them."""
        out = None
        for r in self.records:
            if method is None or r["method"] == method or (method == "random" and r["method"].startswith(RANDOM_PREFIX)):
                have = {c["budget"] for c in r["checkpoints"]}
                out = have if out is None else (out & have if every_run else out | have)
        return sorted(out or ())

    def common_budget(self, a: str, b: str, at_most: int | None = None, every_run: bool = False) -> int | None:
        """The largest budget both methods reached (in every one of their runs, with ``every_run``)."""
        both = sorted(set(self.budgets(a, every_run)) & set(self.budgets(b, every_run)))
        if at_most is not None:
            both = [x for x in both if x <= at_most]
        return both[-1] if both else None

    def values(self, cell, method, budget, metric) -> dict[int, float]:
        runs = self.by[cell].get(method, {})
        out = {}
        for seed, r in runs.items():
            for c in r["checkpoints"]:
                if c["budget"] == budget:
                    out[seed] = c[metric]
        return out

    def paired(self, probe, window, a, b, budget, metric, scale_b=1.0):
        """Seed- and unit-paired arrays (a, scale_b * b) over the units of one (probe, noise) group."""
        xa, xb = [], []
        for cell in self.cells:
            if cell[1] != window or cell[0].split("/")[1] != probe:
                continue
            va, vb = self.values(cell, a, budget, metric), self.values(cell, b, budget, metric)
            for s in sorted(set(va) & set(vb)):
                xa.append(va[s])
                xb.append(scale_b * vb[s])
        return np.array(xa), np.array(xb)


def _fmt(vals) -> str:
    v = np.asarray(list(vals), dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "-"
    return f"{v.mean():.2f}±{v.std(ddof=1) if v.size > 1 else 0.0:.2f}"


def _fmt_seeds(res: Results, cell, method, budget, metric) -> str:
    """mean±sd, with the number of seeds when only some of the method's runs reached ``budget``."""
    vals = res.values(cell, method, budget, metric)
    some = 0 < len(vals) < len(res.by[cell][method])
    return _fmt(vals.values()) + (f" (n={len(vals)})" if some else "")


def claims(res: Results, reference: str, target: str = "snslab", ratio: float = 1.2) -> list[dict]:
    """The issue's claims, one row per (probe, noise) group, Holm-corrected within each claim."""
    groups = sorted({(c[0].split("/")[1], c[1]) for c in res.cells}, key=lambda g: (g[0], -g[1]))
    rows = []
    # the gate and the 3k claim on every pair; "not worse" at the last budget the comparator reached at all,
    # which for the slow full-CMA reference may be on fewer seeds (the table says how many)
    gate_at = res.common_budget(reference, "random", every_run=True)
    mid = res.common_budget(target, reference, at_most=3000, every_run=True)
    last = res.common_budget(target, reference)
    for probe, window in groups:
        row = {"probe": probe, "window_s": window}
        a, b = res.paired(probe, window, reference, "random", gate_at, "hv_found")
        row["gate_budget"] = gate_at
        row["gate_n"] = len(a)
        row["gate_ref_minus_random"] = float(np.median(a - b)) if len(a) else np.nan
        row["gate_p"] = paired_greater(a, b) if len(a) else np.nan
        a, b = res.paired(probe, window, target, reference, mid, "hv_reported", scale_b=ratio)
        row["win_budget"] = mid
        row["win_n"] = len(a)
        row["win_ratio_median"] = float(np.median(a / np.maximum(b / ratio, 1e-12))) if len(a) else np.nan
        row["win_p"] = paired_greater(a, b) if len(a) else np.nan
        a, b = res.paired(probe, window, reference, target, last, "hv_reported")
        row["worse_budget"] = last
        row["worse_n"] = len(a)  # the comparator may reach the last budget on fewer seeds
        row["worse_median_diff"] = float(np.median(b - a)) if len(a) else np.nan
        row["worse_p"] = paired_greater(a, b) if len(a) else np.nan  # small p = target worse
        row["better_p"] = paired_greater(b, a) if len(a) else np.nan  # small p = target better
        rows.append(row)
    for key in ("gate_p", "win_p", "worse_p", "better_p"):
        adj = holm([r[key] if np.isfinite(r[key]) else 1.0 for r in rows])
        for r, p in zip(rows, adj):
            r[key + "_holm"] = p
    return rows


def markdown(res: Results, reference: str, target: str = "snslab") -> str:
    budgets = res.budgets()
    lines = []
    head = ["cell", "T (s)", "method"]
    head += [f"found {b / 1000:g}k" for b in budgets] + [f"reported {b / 1000:g}k" for b in budgets]
    head += ["retention", "stretch", "opt ms/gen"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for cell in res.cells:
        for m in res.methods:
            if m not in res.by[cell]:
                continue
            label = m
            if m == "random":
                label = f"random (sigma {res.random_sigma[cell]})"
            row = [cell[0], f"{cell[1]:g}", label]
            row += [_fmt_seeds(res, cell, m, b, metric) for metric in ("hv_found", "hv_reported") for b in budgets]
            own_last = res.budgets(m)[-1]
            row += [_fmt_seeds(res, cell, m, own_last, "retention"), _fmt_seeds(res, cell, m, own_last, "stretch")]
            t = [r["opt_seconds_per_generation"] * 1000 for r in res.by[cell][m].values()]
            row.append(f"{np.mean(t):.0f}")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def claims_markdown(rows: list[dict], reference: str, target: str = "snslab", ratio: float = 1.2) -> str:
    out = [f"| probe | T (s) | pairs | gate: median HV found at {rows[0]['gate_budget']}, {reference} - random "
           "| p (Holm) "
           f"| {target} / {reference} reported HV at {rows[0]['win_budget']} (median) "
           f"| p({target} > {ratio:g}x, Holm) | pairs at {rows[0]['worse_budget']} "
           f"| median {target} - {reference} at {rows[0]['worse_budget']} "
           f"| p({target} worse, Holm) | p({target} better, Holm) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['probe']} | {r['window_s']:g} | {r['gate_n']} | {r['gate_ref_minus_random']:+.3f} "
            f"| {r['gate_p_holm']:.2g} | {r['win_ratio_median']:.2f} | {r['win_p_holm']:.2g} "
            f"| {r['worse_n']} | {r['worse_median_diff']:+.3f} | {r['worse_p_holm']:.2g} | {r['better_p_holm']:.2g} |"
        )
    return "\n".join(out)


def plot(res: Results, path: str, metric: str = "hv_reported") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = res.budgets()
    groups = sorted({(c[0].split("/")[1], c[1]) for c in res.cells}, key=lambda g: (g[0], -g[1]))
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.4), sharey=True, squeeze=False)
    hollow = False
    for ax, (probe, window) in zip(axes[0], groups):
        cells = [c for c in res.cells if c[1] == window and c[0].split("/")[1] == probe]
        for m in res.methods:
            vals = [[x for c in cells for x in res.values(c, m, b, metric).values()] for b in budgets]
            means = [np.mean(v) if v else np.nan for v in vals]
            (line,) = ax.plot(budgets, means, marker="o", label=m)
            most = max(len(v) for v in vals)
            few = [(b, y) for b, y, v in zip(budgets, means, vals) if 0 < len(v) < most]
            if few:  # a mean over fewer seeds than the method's other points: hollow
                ax.plot(*zip(*few), ls="none", marker="o", ms=7, color=line.get_color(), mfc="white")
                hollow = True
        ax.set_xscale("log")
        ax.set_title(f"{probe}, T = {window:g} s")
        ax.set_xlabel("presentations")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric.removeprefix('hv_')} HV/HV* (mean)")
    axes[0][-1].legend(fontsize=7, title="hollow: mean over fewer seeds" if hollow else None, title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
