"""One probe of a sweep, as a Ray task runs it: `snslab insilico`'s run (run_probe with the database
recorder), its sessions listed on the probe's row as they are created, its outcome written by the task
itself, so a probe that finished is recorded even if the driver dies the next instant.

A failing probe is recorded with its error (one line) and the task returns normally: the sweep goes on.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

_databases: dict[str, Any] = {}


def _database(url: str):
    """One connection pool per worker process and database (workers run many probes)."""
    if url not in _databases:
        from server.db import connect
        from server.settings import Settings

        _databases[url] = connect(Settings(database_url=url))
    return _databases[url]


def summarize(result) -> dict[str, Any]:
    """What the sweep keeps per probe: the evaluation (retention, stretch, affine controls, distances)."""
    ev = dict(result.evaluation)
    sel = result.probe.selection
    ev["selected_index"] = int(sel.index) if getattr(sel, "index", None) is not None else None
    return ev


def run_probe_task(db_url: str, probe_id: int, attempt: int, config: dict[str, Any], models=None) -> dict[str, Any]:
    """Run one probe and record its outcome; returns {"status", "error", "seconds"}. ``models``: shared with
    the other probes of its group (server/sweep/group.py)."""
    from server.config import parse_config
    from server.db import encode_png
    from server.insilico import DatabaseRecorder, run_probe
    from server.sweep import store

    db = _database(db_url)
    engine = db.engine
    if not store.mark_running(engine, probe_id, attempt, f"{socket.gethostname()}:{os.getpid()}"):
        return {"status": "superseded", "error": None, "seconds": 0.0}

    class Recorder(DatabaseRecorder):
        def runner_for(self, phase, search, reference_image, cfg):
            runner = super().runner_for(phase, search, reference_image, cfg)
            store.add_session(engine, probe_id, attempt, self.sessions[-1][1])
            return runner

    t0 = time.perf_counter()
    recorder = None
    try:
        cfg = parse_config(config)
        if cfg.noise.kind == "poisson":
            recorder = Recorder(db.repository(), operator="sweep")
        result = run_probe(cfg, recorder=recorder, models=models)
        if recorder is not None:
            recorder.finish()
        summary = summarize(result)
        png = encode_png(result.selected_image)
        store.finish(engine, probe_id, attempt, status="completed", seconds=time.perf_counter() - t0,
                     summary=summary, selected_png=png)
        return {"status": "completed", "error": None, "seconds": time.perf_counter() - t0}
    except Exception as exc:  # recorded, not raised: one failing probe must not stop the sweep
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:2000]
        if recorder is not None:
            try:
                recorder.finish("failed")
            except Exception:  # the database itself failing: the error below still tries to say why
                pass
        store.finish(engine, probe_id, attempt, status="failed", seconds=time.perf_counter() - t0, error=error)
        return {"status": "failed", "error": error, "seconds": time.perf_counter() - t0}
