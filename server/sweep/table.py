"""The sweep as one flat table (Parquet, via pyarrow): a row per probe, for analysis in pandas, polars, R."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

NUMBERS = ("retention", "stretch", "best_affine_stretch_at_90", "max_pixel_distance", "selected_rate_hz",
           "reference_rate_hz", "generations", "presentations", "selected_generation")


def flat_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat dict per probe: grid labels, state, the summary's numbers, distances per stage, sessions."""
    out = []
    for r in rows:
        s = r.get("summary") or {}
        labels = r.get("labels") or {}
        row = {
            "sweep": r["sweep"], "key": r["key"], "position": r["position"],
            "network": labels.get("network"), "layer": labels.get("layer"), "unit": labels.get("unit"),
            "probe": labels.get("probe"), "mode": labels.get("mode"), "seed": labels.get("seed"),
            "status": r["status"], "error": r.get("error"), "attempt": r["attempt"], "seconds": r.get("seconds"),
        }
        for k in NUMBERS:
            v = s.get(k)
            row[k] = float(v) if v is not None else None
        for stage, d in (s.get("distances") or {}).items():
            row[f"distance.{stage}"] = float(d) if d is not None else None
        row["session_ids"] = [str(x) for x in (r.get("session_ids") or [])]
        row["config"] = json.dumps(r["config"], sort_keys=True)
        out.append(row)
    keys: list[str] = []
    for row in out:  # every row gets every column (stages may differ between probes)
        keys += [k for k in row if k not in keys]
    return [{k: row.get(k) for k in keys} for row in out]


def write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = flat_rows(rows)
    for row in flat:  # labels of mixed kinds (an index here, a position there) as text
        for k in ("network", "layer", "unit", "probe"):
            if row.get(k) is not None:
                row[k] = str(row[k])
    table = pa.Table.from_pylist(flat)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)  # a reader never sees half a file
    return path
