"""The rig as the operator needs to see it: are the display and the bridge there, how fast does the display
refresh (and is it paced in software, without vsync), how many frames were dropped and why presentations were
invalid, how late the bridge answers, the rig-display clock offset, presentations per minute and when the
session should end. Live numbers come from the session service; the rest from the stored presentations, so a
stored session shows its own history too. Fields a client does not report are None.
"""

from __future__ import annotations

import math
import statistics
import time
import uuid
from typing import Any

from server.db import dashboard_queries as q

PACING_KEYS = ("software_paced", "paced", "pacing", "frame_pacing")


def _software_paced(caps: dict[str, Any]) -> bool | None:
    """Whether the display paces its flips on a software clock (no vsync), as far as its hello says:
    ``paced`` (the display client's own key), a few other spellings, or ``vsync`` (paced = no vsync)."""
    for key in PACING_KEYS:
        if key in caps and caps[key] is not None:
            v = caps[key]
            return v.lower() in ("software", "on", "true", "yes") if isinstance(v, str) else bool(v)
    if caps.get("vsync") is not None:
        return not bool(caps["vsync"])
    return None


def _clients(service) -> list[dict[str, Any]]:
    """Every client of the server with its role, capabilities and the age of its last message (its heartbeat
    or anything else it sent)."""
    if service is None:
        return []
    endpoint = service.endpoint
    now = time.monotonic()
    last_rx: dict[str, float] = {}
    lock, table = getattr(endpoint, "_lock", None), getattr(endpoint, "_clients", None)
    if lock is not None and isinstance(table, dict):  # the endpoint keeps when each client last spoke
        with lock:
            last_rx = {cid: getattr(getattr(c, "link", None), "last_rx", None) for cid, c in table.items()}
    out = []
    for c in endpoint.clients():
        caps = dict(c.capabilities or {})
        seen = last_rx.get(c.client_id)
        item = {"client_id": c.client_id, "role": c.role, "alive": c.alive,
                "last_seen_s": None if seen is None or not math.isfinite(seen) else max(0.0, now - seen),
                "capabilities": caps}
        if c.role == "display":
            item["refresh_hz"] = caps.get("refresh_hz")
            item["refresh_measured"] = caps.get("refresh_measured")
            item["software_paced"] = _software_paced(caps)
        if c.role == "bridge":
            item["adapter"] = caps.get("adapter")
            item["clock_offset_s"] = caps.get("clock_offset_s")
        out.append(item)
    return out


def rig_status(engine, service, session_id: uuid.UUID, *, generations_done: int, generations_budget: int | None,
               status: str) -> dict[str, Any]:
    stored = q.rig_numbers(engine, session_id)
    loop = getattr(service, "loop", None)
    here = loop is not None and loop.session_id == session_id and not loop.finished.is_set()
    clients = _clients(service)
    live: dict[str, Any] = {"running_here": here}
    if here:
        st = loop.stats
        now = time.monotonic()
        lat = list(st.bridge_latency_s)
        live |= {
            "display_refresh_hz": st.refresh_hz,
            "last_report_age_s": None if st.last_report_at is None else now - st.last_report_at,
            "last_counts_age_s": None if st.last_counts_at is None else now - st.last_counts_at,
            "bridge_latency_ms": None if not lat else 1000 * statistics.median(lat),
            "bridge_latency_p95_ms": None if not lat else 1000 * sorted(lat)[int(0.95 * (len(lat) - 1))],
        }
    displays = [c for c in clients if c["role"] == "display"]
    bridges = [c for c in clients if c["role"] == "bridge"]
    left = None if generations_budget is None else max(0, generations_budget - generations_done)
    recent = stored["recent_generation_s"]
    eta = None
    if left is not None and recent and status not in ("completed", "aborted", "failed"):
        eta = left * statistics.median(recent)
    return {
        "display_connected": any(c["alive"] for c in displays),
        "bridge_connected": any(c["alive"] for c in bridges),
        "clients": clients,
        "live": live,
        **stored,
        "generations_left": left,
        "eta_s": eta if left else (0.0 if left == 0 else None),
    }
