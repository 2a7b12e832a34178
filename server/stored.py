"""Stored sessions brought back to life: the search a session ran, rebuilt from its stored config, for
resuming it after a crash (live or in silico) and for replaying it offline bit for bit.

A session's config is stored in one of two shapes: a live session ``{"session": SessionCreate, "probe":
ProbeConfig, "reference_code": [...]}``; an in-silico phase ``ProbeConfig + {"phase", "reference_code"}``.
The reference code is stored as exact floats, so the rebuilt search sees the very same reference image; an
image reference is reloaded from its file (server.probe_setup.load_reference), the image the first run saw.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import ProbeConfig
from .engine.search import GenerationReport, SnSSearch
from .probe_setup import build_generator, build_search, build_stages, build_subject, load_reference, natural_threshold
from .session_runner import Counts, SessionRunner


@dataclass
class StoredSession:
    session_id: uuid.UUID
    phase: str  # maximize | invariance | adversarial
    probe: ProbeConfig
    search: SnSSearch
    reference_image: np.ndarray | None
    runner_kwargs: dict[str, Any]
    unit_keys: list[str]
    live: dict[str, Any] | None = None  # the SessionCreate of a live session

    def runner(self, repository=None) -> SessionRunner:
        return SessionRunner(self.search, repository=repository,
                             session_id=self.session_id if repository is not None else None, **self.runner_kwargs)


def rebuild(repository, session_id: uuid.UUID) -> StoredSession:
    cfg = dict(repository.load_resume_point(session_id).config)
    ref_code = cfg.pop("reference_code", None)
    prior = cfg.pop("reference_rates", None)  # a live probe's reference rates re-measured before it started
    cfg.pop("reference_check", None)
    if "probe" in cfg:  # live session
        live = cfg["session"]
        probe = ProbeConfig.model_validate(cfg["probe"])
        phase = probe.mode
        w0, w1 = live.get("response_window_ms", (50.0, 200.0))
        window_s = (w1 - w0) / 1000.0
        units = list(live["units"])
        targets = [units.index(t) for t in (live.get("target_units") or units)]
    else:  # in-silico phase
        live = None
        phase = cfg.pop("phase", cfg.get("mode"))
        cfg.pop("reference_session", None)
        probe = ProbeConfig.model_validate(cfg)
        window_s = probe.noise.window_ms / 1000.0
        units = [u.label for _, u in repository.units(session_id)]
        targets = None
    generator = build_generator(probe)
    if phase == "maximize":
        gens = probe.generations if probe.mode == "maximize" else probe.reference.generations
        search = build_search(probe, generator, {}, mode="maximize", generations=gens)
        reference_image = None
    else:
        if probe.reference.source == "image":  # the picture itself, as the first run saw it
            reference_code, reference_image = load_reference("image", probe.reference.path, generator)
            if ref_code is not None:
                reference_code = np.asarray(ref_code, dtype=np.float64)
        elif ref_code is not None:
            reference_code = np.asarray(ref_code, dtype=np.float64)
            reference_image = generator.render(reference_code[None])[0]
        else:
            reference_code, reference_image = load_reference(probe.reference.source, probe.reference.path, generator)
        threshold = None
        if live is None:
            threshold = natural_threshold(probe, generator, build_subject(probe, generator))
        search = build_search(probe, generator, build_stages(probe), mode=phase, reference_code=reference_code,
                              reference_image=reference_image, natural_threshold=threshold)
    stored_probe = cfg["probe"] if live is not None else cfg
    # sessions stored before lead-ins existed shuffled every reference repeat: replay them that way
    lead_in = probe.lead_in if "lead_in" in stored_probe else 0
    kwargs = dict(seed=probe.seed, reference_image=reference_image, reference_repeats=probe.reference_repeats,
                  lead_in=lead_in, window_s=window_s, target_positions=targets)
    if live is not None:  # the live reference check (server.reference_phase)
        from .reference_phase import CheckPlan

        kwargs["reference_check"] = CheckPlan.of(probe) if phase == "maximize" else None
        kwargs["prior_reference"] = None if prior is None else np.asarray(prior, dtype=np.float64)
    return StoredSession(session_id, phase, probe, search, reference_image, kwargs, units, live)


@dataclass
class Replay:
    """What replaying a stored session showed: whether every generation's proposals were re-created bit
    for bit from the stored seed and responses, and the search as it stood at the end."""

    session: StoredSession
    generations: int = 0
    identical: bool = True
    mismatch: str | None = None
    reports: list[GenerationReport] = field(default_factory=list)


def replay(repository, session_id: uuid.UUID, progress=None) -> Replay:
    """Re-run a stored session's optimizer offline from its stored responses (no rig, no writes).
    ``progress(done, total)`` is called after each generation."""
    stored = rebuild(repository, session_id)
    runner = stored.runner()
    h = repository.load_history(session_id)
    out = Replay(stored)
    active = ~h.superseded if len(h) else np.zeros(0, bool)
    slot = {(int(h.generation[i]), int(h.order_in_batch[i])): i for i in np.flatnonzero(active)}
    gens = sorted(set(int(x) for x in h.generation[active]))
    for k, g in enumerate(gens):
        if progress is not None:
            progress(k, len(gens))
        rows = np.flatnonzero(active & (h.generation == g))
        if (h.counts[rows] < 0).any() or not (h.kind[rows] == "candidate").any():
            break  # the in-flight generation of an unfinished session, or only the lead-in of the next one
        if runner.done:
            break
        batch = runner.next_batch()
        counts = []
        for p in batch.presentations:
            i = slot.get((p.generation, p.order))  # the next generation's lead-in is stored with this one
            if i is None or h.kind[i] != p.kind:
                out.identical, out.mismatch = False, (f"generation {p.generation} slot {p.order}: stored "
                                                      f"{h.kind[i] if i is not None else 'nothing'}, replay {p.kind}")
                return out
            if p.kind == "candidate" and not np.array_equal(h.codes[i], runner.open.codes[p.code_index]):
                out.identical, out.mismatch = False, f"generation {g} candidate {p.code_index}: codes differ"
                return out
            if h.counts[i].min() >= 0:
                counts.append(Counts(p.presentation_id, h.counts[i]))
        report = runner.add_counts(counts)
        if report is None:
            out.identical, out.mismatch = False, f"generation {g}: its stored responses did not complete it"
            return out
        out.reports.append(report)
        out.generations += 1
    if progress is not None:
        progress(out.generations, len(gens))
    return out
