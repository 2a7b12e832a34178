"""A stored session as one NWB file (pynwb), the shape DANDI expects, and as a CSV for spreadsheets.

    meta = ExportMetadata(species="Macaca mulatta", age="P6Y", sex="M", lab="V1 lab", institution="Uni")
    export_nwb(repo, session_id, "session.nwb", meta)

What goes where (docs: /work/shared rig-integration "NWB"):
- NWBFile: uuid identifier, session start = the session's creation time (UTC), Subject, experimenter,
  lab, institution; ``notes`` = the session's stored config (JSON); ``data_collection`` = the rig's own
  recording identity and the clock model, as the bridge reported them.
- Device (the rig), one electrode group, an electrodes row per recorded channel; ``Units`` with each
  unit's spike times, its electrode, and ``obs_intervals`` = the spans whose spikes were kept (each
  presentation's window plus margin): outside them nothing was recorded here.
- stimulus_template ``Images`` (one RGBImage per distinct image, ``order_of_images``) and stimulus
  ``IndexSeries`` "presented_images": which image was shown at each onset.
- ``TimeIntervals`` "stimulus_presentations": start/stop, presentation id, generation, slot, attempt,
  kind, image index, onset source, valid, QC reasons, and the online counts per unit (2-D columns).
- processing module "optimizer": DynamicTables "scores" (per-stage distances, front index, fitness),
  "generations" and "selection" (the probe's answer).

Times are seconds on the rig clock minus ``rig_clock_t0`` (written in the file's notes), so every
timestamp is non-negative; spike times come from the stored integer-ns offsets around each onset.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from server.engine.base import ConfigError

SEXES = ("M", "F", "U", "O")


@dataclass
class ExportMetadata:
    """Who and what the file describes. Filled from options or a TOML/YAML file (``load_metadata``)."""

    species: str | None = None  # Latin binomial (DANDI), e.g. "Macaca mulatta"
    subject_id: str | None = None  # default: the session's subject id
    age: str | None = None  # ISO 8601 duration, e.g. "P6Y"
    sex: str = "U"
    experimenter: list[str] = field(default_factory=list)  # "Last, First"; default: the session's operator
    lab: str | None = None
    institution: str | None = None
    session_description: str | None = None
    subject_description: str | None = None
    electrode_location: str = "unknown"

    def check(self) -> None:
        if not self.species or " " not in self.species.strip():
            raise ConfigError("species", f"{self.species!r} is not a Latin binomial (required by DANDI)",
                              "e.g. 'Macaca mulatta', 'Mus musculus'")
        if not self.age or not self.age.startswith("P"):
            raise ConfigError("age", f"{self.age!r} is not an ISO 8601 duration (required by DANDI)",
                              "e.g. P6Y, P90D, P6Y/P7Y")
        if self.sex not in SEXES:
            raise ConfigError("sex", f"{self.sex!r} is unknown", SEXES)
        for name in ("lab", "institution"):
            if not getattr(self, name):
                raise ConfigError(name, "required (recommended by DANDI)", "any non-empty text")
        for e in self.experimenter:
            if "," not in e:
                raise ConfigError("experimenter", f"{e!r} is not 'Last, First'", "e.g. 'Doe, Jane'")


def load_metadata(path: Path | None, **overrides: Any) -> ExportMetadata:
    """A TOML (.toml) or YAML (.yaml/.yml) file of ExportMetadata fields, then non-None overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        if str(path).endswith(".toml"):
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError("metadata", f"{path}: expected a table of fields")
    data.update({k: v for k, v in overrides.items() if v not in (None, [], ())})
    known = {f.name for f in fields(ExportMetadata)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"metadata.{unknown[0]}", "unknown field", sorted(known))
    if isinstance(data.get("experimenter"), str):
        data["experimenter"] = [data["experimenter"]]
    return ExportMetadata(**data)


@dataclass
class SessionData:
    """Everything an export needs, loaded once."""

    history: Any
    trains: dict
    recordings: list
    unit_keys: list[str]
    on_s: float

    @classmethod
    def load(cls, repo, session_id: uuid.UUID) -> "SessionData":
        from server.db.spikes import load_spike_trains, recordings

        h = repo.load_history(session_id, with_images=True)
        cfg = h.config
        live = cfg.get("session") if isinstance(cfg.get("session"), dict) else None
        keys = list(live["units"]) if live else [u.label or f"{u.channel}:{u.unit}" for u in h.units]
        on_s = float(live.get("on_ms", 100.0)) / 1000.0 if live else 0.1
        return cls(h, load_spike_trains(repo.engine, session_id), recordings(repo.engine, session_id), keys, on_s)


def _png_to_array(png: bytes) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.uint8)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _selection(repo, session_id) -> tuple[int, int] | None:
    """(generation, code index) of the probe's answer, from a bit-for-bit replay of the stored session."""
    from server.stored import replay

    try:
        rep = replay(repo, session_id)
    except Exception:  # noqa: BLE001 - a session that cannot be replayed still exports; no selection table
        return None
    if not rep.identical or not rep.generations:
        return None
    sel = rep.session.search.result()
    return int(sel.generation), int(sel.index)


def export_nwb(repo, session_id: uuid.UUID, out: Path, meta: ExportMetadata,
               progress: Callable[[int, int], None] | None = None, data: SessionData | None = None) -> dict:
    """Write the NWB file; returns counts of what was written."""
    from hdmf.common import DynamicTable, DynamicTableRegion, VectorData, VectorIndex
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.base import ImageReferences, Images
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject
    from pynwb.image import IndexSeries, RGBImage
    from pynwb.misc import Units

    meta.check()
    step = progress or (lambda done, total: None)
    total_steps = 6
    data = data or SessionData.load(repo, session_id)
    h, trains = data.history, data.trains
    s = h.session
    step(1, total_steps)

    shown = np.array([not math.isnan(x) for x in h.rig_onset], dtype=bool)
    onsets = np.where(shown, h.rig_onset, np.nan)
    starts = [t.onset_rig_s + t.start_ms / 1000.0 for t in trains.values()]
    t0 = float(np.floor(min([*onsets[shown], *starts]) - 1.0)) if shown.any() else 0.0

    created = s.created_at
    nwb = NWBFile(
        session_description=meta.session_description or (
            f"snslab {s.mode} closed-loop session: Stretch-and-Squeeze {h.config.get('probe', h.config).get('mode')} "
            f"probe, {s.n_generations} generations, {s.n_presentations} presentations"),
        identifier=str(uuid.uuid4()),
        session_start_time=created,
        timestamps_reference_time=created,
        session_id=str(session_id),
        experimenter=meta.experimenter or [f"{s.operator}, (operator)"],
        lab=meta.lab, institution=meta.institution,
        experiment_description="Closed-loop Stretch-and-Squeeze probe (snslab): images generated and chosen online "
                               "from the recorded units' responses.",
        notes=json.dumps({"rig_clock_t0_s": t0, "config": _jsonable(h.config)}, indent=1),
        data_collection=json.dumps({"recordings": _jsonable(data.recordings),
                                    "clock_models": _jsonable(sorted({json.dumps(t.clock, sort_keys=True)
                                                                      for t in trains.values()}))}, indent=1),
        keywords=["closed loop", "Stretch-and-Squeeze", "invariance", "adversarial", "visual cortex", "snslab"],
        source_script="snslab export", source_script_file_name="server/analysis/nwb_export.py",
    )
    nwb.subject = Subject(subject_id=meta.subject_id or s.subject_id, species=meta.species, age=meta.age,
                          sex=meta.sex, description=meta.subject_description or "recorded subject")

    # --- device, electrodes, units -------------------------------------------------------------------
    device = nwb.create_device(name=s.rig, description=f"recording rig {s.rig!r} (snslab bridge)")
    group = nwb.create_electrode_group(name="array", description="electrodes of the recorded units",
                                       location=meta.electrode_location, device=device)
    channels = sorted({u.channel for u in h.units}) or [0]
    for ch in channels:
        nwb.add_electrode(group=group, location=meta.electrode_location)
    electrode_of = {ch: i for i, ch in enumerate(channels)}
    pos = {int(p): i for i, p in enumerate(h.presentation_id)}
    per_unit: list[list[np.ndarray]] = [[] for _ in data.unit_keys]
    spans = []
    for pid, tr in trains.items():
        i = pos.get(pid)
        onset = tr.onset_rig_s if i is None or math.isnan(h.rig_onset[i]) else float(h.rig_onset[i])
        spans.append((onset + tr.start_ms / 1000.0 - t0, onset + tr.end_ms / 1000.0 - t0))
        for u, d in enumerate(tr.per_unit()):
            per_unit[u].append(onset - t0 + d * 1e-9)
    obs = _union(spans)
    resolutions = [t.clock.get("sample_rate") for t in trains.values() if t.clock.get("sample_rate")]
    stored_ns = max((t.resolution_ns for t in trains.values()), default=1)  # 1000: microsecond steps
    resolution = 1.0 / float(resolutions[0]) if resolutions else stored_ns * 1e-9
    times = [_dedupe(np.concatenate(per_unit[u]), stored_ns * 1e-9) if per_unit[u] else np.zeros(0)
             for u in range(len(data.unit_keys))]
    n_spikes = int(sum(len(t) for t in times))
    specs = [h.units[u] if u < len(h.units) else None for u in range(len(data.unit_keys))]
    chans = np.array([sp.channel if sp else 0 for sp in specs], dtype=np.int64)
    n_u = len(data.unit_keys)
    st = VectorData(name="spike_times", description="spike times (s) within the units' observation intervals",
                    data=np.concatenate(times) if n_u else np.zeros(0))
    el = DynamicTableRegion(name="electrodes", description="the electrode each unit was recorded on",
                            data=np.array([electrode_of.get(int(c), 0) for c in chans], dtype=np.int64),
                            table=nwb.electrodes)
    oi = VectorData(name="obs_intervals", description="spans whose spikes were kept: each presentation's "
                    "window plus margin", data=np.tile(obs, (n_u, 1)) if len(obs) else np.zeros((0, 2)))
    columns = [
        st, VectorIndex(name="spike_times_index", data=np.cumsum([len(t) for t in times]), target=st),
        el, VectorIndex(name="electrodes_index", data=np.arange(1, n_u + 1), target=el),
        oi, VectorIndex(name="obs_intervals_index", data=np.arange(1, n_u + 1) * len(obs), target=oi),
        VectorData(name="unit_key", description="the rig's unit key (channel:unit, or sim:<index>)",
                   data=list(data.unit_keys)),
        VectorData(name="channel", description="rig channel of the unit", data=chans),
        VectorData(name="sorted_unit", description="sorted unit id on its channel",
                   data=np.array([sp.unit if sp else 0 for sp in specs], dtype=np.int64)),
    ]
    nwb.units = Units(name="units", id=np.arange(n_u), columns=columns, resolution=resolution,
                      description="recorded units and their spike times around each presentation",
                      electrode_table=nwb.electrodes)
    step(2, total_steps)

    # --- images and what was shown when --------------------------------------------------------------
    shas = list(dict.fromkeys(h.stimulus_sha256[i] for i in np.flatnonzero(shown)))
    image_index = {sha: k for k, sha in enumerate(shas)}
    imgs = [RGBImage(name=f"image_{k:05d}", data=_png_to_array(h.images[sha]),
                     description=f"stimulus sha256 {sha}") for k, sha in enumerate(shas)]
    images = Images(name="stimuli", images=imgs, description="every distinct image shown in the session, "
                    "as displayed (8-bit RGB)", order_of_images=ImageReferences(name="order_of_images", data=imgs))
    nwb.add_stimulus_template(images)
    order = np.flatnonzero(shown)[np.argsort(onsets[shown], kind="stable")]
    if len(order):
        nwb.add_stimulus(IndexSeries(
            name="presented_images", data=np.array([image_index[h.stimulus_sha256[i]] for i in order], np.uint32),
            indexed_images=images, unit="N/A", timestamps=onsets[order] - t0,
            description="index into stimuli of the image shown at each presentation onset (rig clock)"))
    step(3, total_steps)

    # --- presentations table --------------------------------------------------------------------------
    n_units = len(data.unit_keys)
    cols = [
        ("presentation_id", "snslab presentation id (database)"),
        ("generation", "optimizer generation the presentation belongs to"),
        ("order_in_batch", "slot of the presentation in its generation's batch"),
        ("attempt", "0, or the n-th re-showing of the slot after a crash or an invalid presentation"),
        ("superseded", "True when a later attempt replaced this presentation (its counts were not used)"),
        ("kind", "candidate | reference | natural | control | reference-check | blank (these two: a live "
                 "maximize session's reference check)"),
        ("image_index", "index into stimulus_template 'stimuli'"),
        ("stimulus_sha256", "content hash of the image's PNG"),
        ("code_index", "row of the candidate in its generation's proposal, -1 for other kinds"),
        ("onset_source", "how the onset was found: photodiode | ttl | marker | flip | simulated"),
        ("display_onset", "the display's flip time (display clock, seconds)"),
        ("valid", "False when quality control rejected the presentation (see qc_reasons)"),
        ("qc_reasons", "quality-control findings, '; '-separated (empty: none)"),
        ("dropped_frames", "frames the display dropped during the presentation"),
        ("answered", "True when the bridge's counts for the presentation arrived"),
        ("online_counts", f"spike counts per unit ({', '.join(data.unit_keys)}) in the online response window"),
        ("online_baseline_counts", "spike counts per unit in the online baseline window (-1: none)"),
        ("response_window_ms", "the online response window [start, end) in ms after onset"),
    ]
    sel = order
    answered = np.array([h.counts[i].min() >= 0 for i in sel], dtype=bool)
    values = {
        "presentation_id": h.presentation_id[sel].astype(np.int64), "generation": h.generation[sel].astype(np.int64),
        "order_in_batch": h.order_in_batch[sel].astype(np.int64), "attempt": h.attempt[sel].astype(np.int64),
        "superseded": h.superseded[sel].astype(bool), "kind": [str(h.kind[i]) for i in sel],
        "image_index": np.array([image_index[h.stimulus_sha256[i]] for i in sel], dtype=np.int64),
        "stimulus_sha256": [h.stimulus_sha256[i] for i in sel], "code_index": h.code_index[sel].astype(np.int64),
        "onset_source": [str(h.onset_source[i] or "") for i in sel],
        "display_onset": h.display_onset[sel].astype(np.float64),
        "valid": np.array([bool(h.valid[i]) if h.valid[i] is not None else False for i in sel], dtype=bool),
        "qc_reasons": ["; ".join(h.qc_reasons[i]) for i in sel],
        "dropped_frames": h.dropped_frames[sel].astype(np.int64), "answered": answered,
        "online_counts": h.counts[sel].astype(np.int32).reshape(len(sel), n_units),
        "online_baseline_counts": h.baseline_counts[sel].astype(np.int32).reshape(len(sel), n_units),
        "response_window_ms": np.where(answered[:, None], h.window_ms[sel], np.nan).reshape(len(sel), 2),
    }
    start = (onsets[sel] - t0).astype(np.float64)
    table = TimeIntervals(
        name="stimulus_presentations", id=np.arange(len(sel)),
        description="every presentation shown, with its onset on the rig clock, quality control and the spike "
                    "counts the closed loop used",
        columns=[VectorData(name="start_time", description="onset (s, rig clock minus rig_clock_t0)", data=start),
                 VectorData(name="stop_time", description="offset: onset + the planned on duration",
                            data=start + data.on_s)]
        + [VectorData(name=name, description=desc, data=values[name]) for name, desc in cols])
    rows = len(sel)
    nwb.add_time_intervals(table)
    step(4, total_steps)

    # --- optimizer ------------------------------------------------------------------------------------
    mod = nwb.create_processing_module(name="optimizer", description="the Stretch-and-Squeeze optimizer's "
                                       "scores, fronts and selection, as computed online")
    scored = [i for i in range(len(h)) if h.distances[i] is not None]
    stages = sorted({k for i in scored for k in h.distances[i]})
    sc = np.array(scored, dtype=np.int64)
    score_cols = [
        ("presentation_id", "presentation scored", h.presentation_id[sc].astype(np.int64)),
        ("generation", "its generation", h.generation[sc].astype(np.int64)),
        ("code_index", "its row in the generation's proposal", h.code_index[sc].astype(np.int64)),
        ("front_index", "non-dominated front within the generation (0 = first front)",
         h.front_index[sc].astype(np.int64)),
        ("fitness", "scalar fitness told to the optimizer (higher is better)", h.fitness[sc].astype(np.float64)),
        ("first_front", "True for the generation's first front (kept for the final selection)",
         h.selected[sc].astype(bool)),
    ] + [(f"distance_{st.replace('-', '_')}", f"distance to the reference at stage {st}",
          np.array([float(h.distances[i].get(st, np.nan)) for i in scored], dtype=np.float64)) for st in stages]
    scores = DynamicTable(name="scores", id=np.arange(len(sc)),
                          description="per scored candidate: distances to the reference per stage and for the unit, "
                          "Pareto front index within its generation, fitness",
                          columns=[VectorData(name=n, description=d, data=v) for n, d, v in score_cols])
    mod.add(scores)
    gens = DynamicTable(name="generations", description="per generation: status and the server's timings")
    gens.add_column(name="generation", description="generation index")
    gens.add_column(name="status", description="planned | proposed | completed")
    timing_keys = sorted({k for g in h.generations for k, v in (g["timings"] or {}).items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for k in timing_keys:
        gens.add_column(name=f"timing_{k}", description=f"the server's timing '{k}' of the generation (NaN: none)")
    for g in h.generations:
        t = g["timings"] or {}
        gens.add_row(generation=int(g["index"]), status=str(g["status"]),
                     **{f"timing_{k}": float(t.get(k, np.nan)) for k in timing_keys})
    mod.add(gens)
    step(5, total_steps)
    sel = _selection(repo, session_id)
    selected = 0
    if sel is not None:
        sel_table = DynamicTable(name="selection", description="the probe's answer: the scored candidate the "
                                 "optimizer selects at the end (replayed bit for bit from the stored session)")
        sel_table.add_column(name="presentation_id", description="presentation of the selected candidate")
        sel_table.add_column(name="generation", description="its generation")
        sel_table.add_column(name="code_index", description="its row in the generation's proposal")
        hit = [i for i in scored if int(h.generation[i]) == sel[0] and int(h.code_index[i]) == sel[1]
               and not h.superseded[i]]
        for i in hit[:1]:
            sel_table.add_row(presentation_id=int(h.presentation_id[i]), generation=sel[0], code_index=sel[1])
            selected = 1
        mod.add(sel_table)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(out), "w") as io:
        io.write(nwb)
    step(6, total_steps)
    return {"presentations": rows, "images": len(imgs), "units": n_units, "spikes": n_spikes,
            "scores": len(scored), "selected": selected, "rig_clock_t0_s": t0}


def _union(spans: list[tuple[float, float]]) -> np.ndarray:
    if not spans:
        return np.zeros((0, 2))
    spans = sorted(spans)
    out = [list(spans[0])]
    for a, b in spans[1:]:
        if a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return np.array(out)


def _dedupe(times: np.ndarray, resolution_s: float = 1e-9) -> np.ndarray:
    """One spike per time: overlapping windows of consecutive presentations store the same spike twice, and
    its offsets, floored to the stored resolution from two onsets, can differ by up to that resolution (a
    microsecond: far below any unit's refractory period). Each copy is the true time floored, so the latest
    copy is the closest: it is the one kept."""
    t = np.sort(times)
    if len(t) < 2:
        return t
    keep = np.concatenate([np.diff(t) > resolution_s + 5e-9, [True]])
    return t[keep]


def export_csv(repo, session_id: uuid.UUID, out_dir: Path, data: SessionData | None = None) -> Path:
    """presentations.csv: one row per presentation and unit (the online counts and the presentation's QC)."""
    import csv

    data = data or SessionData.load(repo, session_id)
    h = data.history
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "presentations.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["session_id", "presentation_id", "generation", "order_in_batch", "attempt", "superseded", "kind",
                    "stimulus_sha256", "onset_source", "rig_onset_s", "display_onset_s", "valid", "qc_reasons",
                    "unit_position", "unit_key", "count", "baseline_count", "window_start_ms", "window_end_ms",
                    "spikes_stored", "front_index", "fitness"])
        for i in range(len(h)):
            for u, key in enumerate(data.unit_keys):
                w.writerow([str(session_id), int(h.presentation_id[i]), int(h.generation[i]),
                            int(h.order_in_batch[i]), int(h.attempt[i]), bool(h.superseded[i]), h.kind[i],
                            h.stimulus_sha256[i], h.onset_source[i] or "", _num(h.rig_onset[i]),
                            _num(h.display_onset[i]), "" if h.valid[i] is None else bool(h.valid[i]),
                            "; ".join(h.qc_reasons[i]), u, key, _int(h.counts[i][u]), _int(h.baseline_counts[i][u]),
                            _num(h.window_ms[i][0]), _num(h.window_ms[i][1]),
                            int(h.presentation_id[i]) in data.trains,
                            "" if h.front_index[i] < 0 else int(h.front_index[i]), _num(h.fitness[i])])
    return path


def _num(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(float(x))


def _int(x) -> str:
    return "" if x < 0 else str(int(x))


__all__ = ["ExportMetadata", "SessionData", "export_csv", "export_nwb", "load_metadata", "asdict"]
