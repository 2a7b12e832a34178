"""Counterfactual re-scoring: what would the fronts and the selected image have been on another stage?

    res = rescore(repo, session_id, "gabor-energy")                  # or "cnn:resnet18:layer3", weights=...
    res = rescore(repo, session_id, "pixel", counts_analysis=7)      # with re-counted responses

The images are the ones that were shown (stored PNGs, as displayed) and the optimizer's trajectory is what
it was; only the scoring changes: each generation's scored candidates get the new stage's distance to the
reference, the unit's distance to the running reference response (the same running mean the engine used,
from the stored or re-counted counts), then the engine's own Pareto code ranks them (fronts, within-front
order, fitness) and picks the answer (the newest member of the global front over every generation's first
front). Stored as a new analysis; the session's rows are never modified.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO

import numpy as np

from server.engine.base import ConfigError


def parse_stage(text: str, params: dict | None = None):
    """'pixel' | 'gabor-energy' | 'cnn:ARCHITECTURE:LAYER' (+ params) -> (label, Stage)."""
    from server.engine.stages import STAGES, make_stage

    params = dict(params or {})
    name, *rest = str(text).split(":")
    if name not in STAGES:
        raise ConfigError("stage", f"unknown stage {text!r}", ["pixel", "gabor-energy", "cnn:ARCH:LAYER"])
    if name == "cnn":
        if len(rest) != 2 or not all(rest):
            raise ConfigError("stage", f"{text!r}: a cnn stage is cnn:ARCHITECTURE:LAYER", "e.g. cnn:resnet18:layer3")
        params.setdefault("architecture", rest[0])
        params.setdefault("layer", rest[1])
    elif rest:
        raise ConfigError("stage", f"{text!r}: the {name} stage takes no ':' parts (use --stage-param)")
    return str(text), make_stage(name, **params)


@dataclass
class Pick:
    generation: int
    presentation_id: int
    code_index: int
    distances: dict[str, float]


@dataclass
class RescoreResult:
    analysis_id: int
    stage: str
    generations: int = 0
    scored: int = 0
    front0_changed: int = 0  # candidates whose first-front membership changed
    front0_new: int = 0
    front0_online: int = 0
    online: Pick | None = None
    rescored: Pick | None = None
    per_generation: list[dict] = field(default_factory=list)


def _image(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.float32) / np.float32(255.0)


def rescore(repo, session_id: uuid.UUID, stage_text: str, stage_params: dict | None = None,
            counts_analysis: int | None = None, progress: Callable[[int, int], None] | None = None,
            seed: int | None = None) -> RescoreResult:
    from server.db.analyses import AnalysisRow, create_analysis, load_analysis
    from server.engine.base import as_displayed
    from server.engine.pareto import newest_of_global_front, nondominated_sort, scalar_fitness, within_front_key
    from server.engine.probes import UNIT, Probe, stage_distances, unit_distances
    from server.stored import rebuild

    stored = rebuild(repo, session_id)
    if stored.phase == "maximize":
        raise ConfigError("session", f"{session_id} is a maximize session: it has no stretch/squeeze distances",
                          "an invariance or adversarial session")
    label, stage = parse_stage(stage_text, stage_params)
    h = repo.load_history(session_id, with_images=True)
    kw = stored.runner_kwargs
    window_s = kw["window_s"]
    counts = {int(h.presentation_id[i]): np.asarray(h.counts[i], np.float64)
              for i in range(len(h)) if h.counts[i].min() >= 0}
    if counts_analysis is not None:
        info, rows = load_analysis(repo.engine, counts_analysis)
        if info.session_id != session_id or info.kind != "recount":
            raise ConfigError("counts", f"analysis {counts_analysis} is not a recount of session {session_id}",
                              "an id printed by `snslab recount`")
        w = info.params["window_ms"]
        window_s = (w[1] - w[0]) / 1000.0
        counts = {pid: np.asarray(r.counts, np.float64) for pid, r in rows.items() if r.counts is not None}
    targets = kw["target_positions"]
    t = slice(None) if targets is None else list(targets)
    old = stored.probe
    probe = Probe(stored.search.probe.mode, (label,), stored.search.probe.ordering,
                  tuple(b for b in stored.search.probe.bounds if b.stage == UNIT))
    ref = as_displayed(np.asarray(stored.reference_image, np.float32)[None])
    ref_feat = stage.features(ref)[0]
    norms = {label: float(np.linalg.norm(ref_feat))}
    rng = np.random.default_rng(np.random.SeedSequence(old.seed if seed is None else seed).spawn(2)[1])

    active = ~h.superseded
    scored_rows = np.array([d is not None for d in h.distances], bool)
    gens = sorted({int(g) for g in h.generation[scored_rows]})
    out = RescoreResult(0, label)
    ref_sum, ref_n = None, 0
    pool_gen, pool_pid, pool_rates, pool_dist, pool_fit, pool_code = [], [], [], [], [], []
    results: list[AnalysisRow] = []
    for k, g in enumerate(gens):
        refs = np.flatnonzero(active & (h.generation == g) & (h.kind == "reference"))
        rr = [counts[int(h.presentation_id[i])][t] / window_s for i in refs if int(h.presentation_id[i]) in counts]
        if rr:
            rr = np.stack(rr)
            ref_sum = rr.sum(0) if ref_sum is None else ref_sum + rr.sum(0)
            ref_n += len(rr)
        rows = np.flatnonzero(scored_rows & (h.generation == g))
        rows = rows[np.argsort(h.code_index[rows], kind="stable")]
        missing = [int(h.presentation_id[i]) for i in rows if int(h.presentation_id[i]) not in counts]
        if missing:
            raise ConfigError("counts", f"presentation {missing[0]} (generation {g}) has no counts in analysis "
                              f"{counts_analysis}", "a recount of every answered presentation")
        rates = np.stack([counts[int(h.presentation_id[i])][t] for i in rows]) / window_s
        images = np.stack([_image(h.images[h.stimulus_sha256[i]]) for i in rows])
        dist = {label: stage_distances(stage.features(images), ref_feat),
                UNIT: unit_distances(rates, ref_sum / ref_n)}
        objectives = probe.objectives(dist, norms)
        fronts = nondominated_sort(objectives)
        key = within_front_key(probe.ordering, objectives, fronts, probe.squeezes_unit, 1, rng)
        fitness = scalar_fitness(fronts, key)
        online0 = h.front_index[rows] == 0
        out.front0_changed += int(np.sum((fronts == 0) != online0))
        out.front0_new += int(np.sum(fronts == 0))
        out.front0_online += int(np.sum(online0))
        out.per_generation.append({"generation": g, "front0_online": int(online0.sum()),
                                   "front0_rescored": int((fronts == 0).sum()),
                                   "changed": int(np.sum((fronts == 0) != online0))})
        for j, i in enumerate(rows):
            pid = int(h.presentation_id[i])
            d = {label: float(dist[label][j]), UNIT: float(dist[UNIT][j])}
            results.append(AnalysisRow(pid, distances=d, front_index=int(fronts[j])))
            if fronts[j] == 0 and np.isfinite(objectives[j]).all():
                pool_gen.append(g), pool_pid.append(pid), pool_rates.append(rates[j])
                pool_dist.append(d[label]), pool_fit.append(float(fitness[j])), pool_code.append(int(h.code_index[i]))
        out.scored += len(rows)
        out.generations += 1
        if progress is not None:
            progress(k + 1, len(gens))
    if pool_pid:
        final = {label: np.array(pool_dist), UNIT: unit_distances(np.array(pool_rates), ref_sum / ref_n)}
        kk = newest_of_global_front(probe.objectives(final, norms), np.array(pool_gen), np.array(pool_fit))
        out.rescored = Pick(pool_gen[kk], pool_pid[kk], pool_code[kk],
                            {label: float(final[label][kk]), UNIT: float(final[UNIT][kk])})
        results = [AnalysisRow(r.presentation_id, distances=r.distances, front_index=r.front_index,
                               selected=r.presentation_id == out.rescored.presentation_id) for r in results]
    out.online = _online_pick(repo, session_id, h)
    summary = {
        "generations": out.generations, "scored": out.scored, "front0_online": out.front0_online,
        "front0_rescored": out.front0_new, "front0_changed": out.front0_changed,
        "selected_online": None if out.online is None else vars(out.online),
        "selected_rescored": None if out.rescored is None else vars(out.rescored),
        "dropped_bounds": [f"{b.stage}{b.op}{b.value}{'%' if b.relative else ''}"
                           for b in stored.search.probe.bounds if b.stage != UNIT],
    }
    params = {"stage": label, "stage_params": {k: str(v) for k, v in (stage_params or {}).items()},
              "counts_analysis": counts_analysis, "window_s": window_s, "original_stages": list(old.stages and
              [s.key for s in old.stages])}
    out.analysis_id = create_analysis(repo.engine, session_id, "rescore", params, summary, results,
                                      counts_analysis_id=counts_analysis)
    return out


def _online_pick(repo, session_id, h) -> Pick | None:
    """The answer the online search gives (a bit-for-bit replay of the stored session)."""
    from server.stored import replay

    try:
        rep = replay(repo, session_id)
    except Exception:  # noqa: BLE001 - then there is nothing to compare with
        return None
    if not rep.identical or not rep.generations:
        return None
    sel = rep.session.search.result()
    for i in range(len(h)):
        if (int(h.generation[i]) == sel.generation and int(h.code_index[i]) == sel.index
                and h.kind[i] == "candidate" and not h.superseded[i]):
            return Pick(int(sel.generation), int(h.presentation_id[i]), int(sel.index),
                        {k: float(v) for k, v in sel.distances.items()})
    return None
