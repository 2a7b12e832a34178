"""A sweep's figures, as in the paper: the stretch each probe reached per layer (with the affine controls:
the largest stretch a translation/rotation/scaling of the reference reaches while keeping >= 90% of the
response), and the distributions of retention; PNG files and one small HTML page that shows them with a
table per layer and probe.
"""

from __future__ import annotations

import base64
import html
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from server.sweep import store
from server.sweep.table import flat_rows


def _group_key(row: dict[str, Any]) -> str:
    return row["layer"] or row["network"] or "all"


def _sweep_id(database, sweep: str):
    path = Path(sweep)
    name = sweep
    if path.suffix == ".toml" and path.is_file():
        from server.sweep.spec import load_sweep

        name = load_sweep(path).name
    sid = store.find_sweep(database.engine, name)
    if sid is None:
        raise LookupError(f"sweep: no sweep named {sweep!r} in the database")
    return sid


def write_report(database, sweep: str, output: Path | None = None) -> Path:
    """Figures (stretch.png, retention.png) and index.html for a stored sweep; returns the page's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sid = _sweep_id(database, sweep)
    raw = store.probe_rows(database.engine, sid)
    rows = flat_rows(raw)
    name = rows[0]["sweep"] if rows else sweep
    if output is None:
        import sqlalchemy as sa

        with database.engine.connect() as conn:
            spec = conn.execute(sa.select(store.S.c.spec).where(store.S.c.id == sid)).scalar_one()
        output = Path(spec.get("output", f"runs/sweeps/{name}")) / "report"
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    done = [r for r in rows if r["status"] == "completed" and r["stretch"] is not None]
    groups = sorted({_group_key(r) for r in done}, key=str)
    probes = sorted({r["probe"] or r["mode"] for r in done}, key=str)

    # stretch per layer and probe, with the affine controls
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(groups) * max(1, len(probes)) ** 0.5 + 2), 4.2))
    width = 0.8 / max(1, len(probes) + 1)
    cmap = plt.get_cmap("tab10")
    for j, probe in enumerate(probes + ["affine control"]):
        for i, g in enumerate(groups):
            sel = [r for r in done if _group_key(r) == g and (probe == "affine control" or (r["probe"] or r["mode"]) == probe)]
            vals = [r["best_affine_stretch_at_90"] if probe == "affine control" else r["stretch"] for r in sel]
            vals = [v for v in vals if v is not None]
            if not vals:
                continue
            x = i + (j - len(probes) / 2) * width
            color = "0.6" if probe == "affine control" else cmap(j % 10)
            ax.bar(x, float(np.mean(vals)), width, color=color, alpha=0.6,
                   label=probe if i == 0 else None)
            jitter = np.linspace(-width / 4, width / 4, len(vals)) if len(vals) > 1 else [0.0]
            ax.scatter(x + np.asarray(jitter), vals, s=8, color="k", zorder=3)
    ax.set_xticks(range(len(groups)), groups, rotation=20)
    ax.set_ylabel("stretch (fraction of the largest pixel distance)")
    ax.set_title(f"{name}: stretch per {'layer' if any(r['layer'] for r in done) else 'network'} and probe")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output / "stretch.png", dpi=110)
    plt.close(fig)

    # retention distributions
    fig, ax = plt.subplots(figsize=(6, 4))
    series = [(f"{p}", [r["retention"] for r in done if (r["probe"] or r["mode"]) == p and r["retention"] is not None])
              for p in probes]
    series = [(p, v) for p, v in series if v]
    if series:
        ax.violinplot([v for _, v in series], showmedians=True)
        ax.set_xticks(range(1, len(series) + 1), [p for p, _ in series])
    ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
    ax.set_ylabel("retention (selected response / reference response)")
    ax.set_title("retention of the selected images")
    fig.tight_layout()
    fig.savefig(output / "retention.png", dpi=110)
    plt.close(fig)

    # the page
    by = defaultdict(list)
    for r in done:
        by[(_group_key(r), r["probe"] or r["mode"])].append(r)
    table = "".join(
        f"<tr><td>{html.escape(str(g))}</td><td>{html.escape(str(p))}</td><td>{len(v)}</td>"
        f"<td>{np.mean([r['stretch'] for r in v]):.3f}</td>"
        f"<td>{np.mean([r['best_affine_stretch_at_90'] or 0 for r in v]):.3f}</td>"
        f"<td>{np.median([r['retention'] for r in v if r['retention'] is not None] or [np.nan]):.1%}</td></tr>"
        for (g, p), v in sorted(by.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))))
    failed = [r for r in rows if r["status"] == "failed"]
    fails = "".join(f"<li>{html.escape(str(r['network']))} {html.escape(str(r['layer']))} "
                    f"{html.escape(str(r['unit']))} {html.escape(str(r['probe']))} seed {r['seed']}: "
                    f"<code>{html.escape(r['error'] or '')}</code></li>" for r in failed)
    counts = defaultdict(int)
    for r in rows:
        counts[r["status"]] += 1

    def img(name: str) -> str:
        data = base64.b64encode((output / name).read_bytes()).decode()
        return f'<img src="data:image/png;base64,{data}" alt="{name}">'

    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>sweep {html.escape(name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:3px 8px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>sweep {html.escape(name)}</h1>
<p>{len(rows)} probes: {counts['completed']} completed, {counts['failed']} failed,
{counts['pending'] + counts['running']} not finished.</p>
<h2>Stretch per layer and probe</h2>{img("stretch.png")}
<h2>Retention</h2>{img("retention.png")}
<h2>Per layer and probe</h2>
<table><tr><th>layer</th><th>probe</th><th>probes</th><th>mean stretch</th><th>mean affine control</th>
<th>median retention</th></tr>{table}</table>
<h2>Failed probes</h2><ul>{fails or "<li>none</li>"}</ul>
</body></html>
"""
    (output / "index.html").write_text(page)
    return output / "index.html"
