"""In-silico probe runs: the same SnS loop as on a rig, with a model subject in place of the animal.

``run_probe(config)`` finds the reference (by default the unit's most exciting image via ``maximize``),
runs the probe, and evaluates the selected image noise-free against the reference's affine controls.
``write_outputs`` writes summary.json and the plots. A ``recorder`` (the database layer) sees every
generation, so in-silico runs are stored exactly like rig sessions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .config import ProbeConfig, config_record
from .engine.base import ConfigError, ImageGenerator, SeedStreams, Subject, as_displayed, presentation_counts, presentation_rng
from .engine.controls import control_table
from .engine.evaluation import affine_control_table, max_pixel_distance, retention_and_stretch
from .engine.reference_check import ReferenceAtBaseline, ReferenceCheck, judge_reference
from .engine.probes import UNIT
from .engine.search import GenerationReport, Selection, SnSSearch
from .engine.verify import Race, candidates, doubling_looks, lineages
from .probe_setup import (  # noqa: F401  (build_* stay importable from here)
    build_generator,
    build_search,
    build_stages,
    build_subject,
    load_reference,
    natural_threshold,
)
from .session_runner import Batch, Counts, SessionRunner
from .stored import rebuild


class RunRecorder(Protocol):
    """Makes the runner of each phase of a run (``DatabaseRecorder`` stores them)."""

    def runner_for(self, phase: str, search: SnSSearch, reference_image, config: ProbeConfig) -> SessionRunner:
        """A runner that persists this phase (one stored session per phase)."""


class DatabaseRecorder:
    """Stores each phase of an in-silico run as a session (rig "insilico"), exactly like a rig session."""

    def __init__(self, repository, operator: str = "insilico"):
        self.repo = repository
        self.operator = operator
        self.sessions: list[tuple[str, Any]] = []

    def runner_for(self, phase: str, search: SnSSearch, reference_image, config: ProbeConfig) -> SessionRunner:
        if config.noise.kind != "poisson":
            raise ConfigError("noise.kind", "stored runs need spike counts", "poisson")
        stored = config_record(config) | {"phase": phase}
        if self.sessions:
            stored["reference_session"] = str(self.sessions[-1][1])
        if reference_image is not None:
            code = getattr(search, "reference_code", None)
            if code is not None:  # exact: JSON floats round-trip float64, so a resume sees the same image
                stored["reference_code"] = [float(v) for v in code]
        sid = self.repo.create_session(
            config=stored, seed=config.seed, mode="insilico", operator=self.operator,
            subject_id=config.subject.name, rig="insilico",
        )
        self.repo.add_units(sid, [(0, u, f"{config.subject.name}#{u}") for u in range(search_units(config))])
        self.sessions.append((phase, sid))
        return SessionRunner(search, seed=config.seed, reference_image=reference_image,
                             reference_repeats=config.reference_repeats, lead_in=config.lead_in,
                             window_s=config.noise.window_ms / 1000.0, repository=self.repo, session_id=sid)

    def finish(self, status: str = "completed") -> None:
        for _, sid in self.sessions:
            self.repo.set_session_status(sid, status)


def search_units(config: ProbeConfig) -> int:
    return int(config.subject.params.get("n_units", 1))


@dataclass
class Phase:
    """One search (the maximize run that finds the reference, or the probe itself) and what it produced."""

    name: str
    search: SnSSearch
    reports: list[GenerationReport] = field(default_factory=list)
    selection: Selection | None = None


@dataclass
class RunResult:
    config: ProbeConfig
    generator: ImageGenerator
    subject: Subject
    reference_code: np.ndarray | None
    reference_image: np.ndarray | None
    phases: list[Phase]
    selected_image: np.ndarray
    evaluation: dict[str, Any]
    reference_check: ReferenceCheck | None = None

    @property
    def probe(self) -> Phase:
        return self.phases[-1]


class InSilicoRig:
    """The in-silico rig: shows a batch to a model subject and counts spikes in the response window.

    Poisson counts by default; with ``noise.kind = "none"`` the expected count rate * window (a float).
    """

    def __init__(self, subject: Subject, config: ProbeConfig, seed: int):
        self.subject, self.seed = subject, seed
        self.noisy = config.noise.kind == "poisson"
        self.window_s = config.noise.window_ms / 1000.0

    def present(self, batch: Batch) -> list[Counts]:
        """Counts keyed by (seed, generation, order, attempt): the simulated bridge draws the same ones."""
        rates = self.subject.rate(as_displayed(np.stack([p.image for p in batch.presentations])))
        out = []
        for p, r in zip(batch.presentations, rates):
            if self.noisy:
                rng = presentation_rng(self.seed, p.generation, p.order, p.attempt)
                c = presentation_counts(r, self.window_s, rng)
            else:
                c = r * self.window_s
            out.append(Counts(p.presentation_id, c))
        return out


def _run_phase(phase: Phase, runner: SessionRunner, rig: InSilicoRig, progress, task) -> None:
    while not runner.done:
        batch = runner.next_batch()
        report = runner.add_counts(rig.present(batch))
        phase.reports.append(report)
        if progress is not None:
            best = report.responses.mean(1).max()
            progress.update(task, advance=1, description=f"{phase.name:<11} g{report.generation:>3} best {best:6.1f} Hz")
    phase.selection = runner.search.result()


def resume_stored(repository, session_id, *, progress: bool = False) -> Phase:
    """Finish a stored in-silico session after a crash (kill -9 included), from its last committed
    generation: the result equals an uninterrupted run with the same seed."""
    stored = rebuild(repository, session_id)
    runner = stored.runner(repository)
    subject = build_subject(stored.probe, stored.search.generator)
    rig = InSilicoRig(subject, stored.probe, SeedStreams(stored.probe.seed).noise_seed(stored.phase))
    phase = Phase(stored.phase, stored.search)
    if runner.resume() is not None and runner.unanswered():
        runner.add_counts(rig.present(Batch(runner.open.batch.generation, runner.unanswered())))
    _run_phase(phase, runner, rig, None, None)
    phase.reports = list(runner.reports)  # every generation scored here, the resumed one included
    repository.set_session_status(session_id, "completed")
    return phase


def measure_reference(config: ProbeConfig, subject: Subject, reference_image: np.ndarray) -> ReferenceCheck:
    """Fresh presentations of the reference and of a blank (mean-grey) screen, interleaved, with their own
    seeded spike noise; judged by ``judge_reference`` (server.engine.reference_check)."""
    k = config.reference.check_repeats
    blank = np.full_like(reference_image, 0.5, dtype=np.float32)
    rates = subject.rate(as_displayed(np.stack([reference_image, blank]))).astype(np.float64)
    window = config.noise.window_ms / 1000.0
    seed = SeedStreams(config.seed).noise_seed("reference-check")
    measured = np.empty((2, k))
    for i in range(k):
        for j in range(2):
            if config.noise.kind == "poisson":
                c = presentation_counts(rates[j], window, presentation_rng(seed, 0, 2 * i + j))
                measured[j, i] = float(np.mean(c)) / window
            else:
                measured[j, i] = float(np.mean(rates[j]))
    return judge_reference(measured[0], measured[1], min_ratio=config.reference.min_ratio,
                           min_z=config.reference.min_z)


def run_probe(config: ProbeConfig, *, progress: bool = False, recorder: RunRecorder | None = None,
              models=None) -> RunResult:
    """Maximize (or load) the reference, check that it clearly drives the unit (``ReferenceAtBaseline``
    otherwise), run the probe, evaluate its image against the controls. ``models`` (with build_generator,
    build_subject, build_stages) supplies models shared with other probes (server/sweep/group.py)."""
    streams = SeedStreams(config.seed)
    make_generator, make_subject, make_stages = (
        (build_generator, build_subject, build_stages) if models is None
        else (models.build_generator, models.build_subject, models.build_stages))
    generator = make_generator(config)
    subject = make_subject(config, generator)
    stages = make_stages(config) if config.mode != "maximize" else {}
    rigs = {m: InSilicoRig(subject, config, streams.noise_seed(m)) for m in ("maximize", config.mode)}

    def runner(name, search, ref):
        if recorder is not None:
            return recorder.runner_for(name, search, ref, config)
        return SessionRunner(search, seed=config.seed, reference_image=ref,
                             reference_repeats=config.reference_repeats, lead_in=config.lead_in,
                             window_s=config.noise.window_ms / 1000.0)
    phases: list[Phase] = []

    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        bar.start()
    try:
        reference_code = reference_image = None
        need_max = config.mode == "maximize" or config.reference.source == "maximize"
        if need_max:
            gens = config.generations if config.mode == "maximize" else config.reference.generations
            search = build_search(config, generator, {}, mode="maximize", generations=gens)
            phase = Phase("maximize", search)
            task = bar.add_task("maximize", total=gens) if bar else None
            _run_phase(phase, runner("maximize", search, None), rigs["maximize"], bar, task)
            phases.append(phase)
            reference_code = phase.selection.code
            reference_image = generator.render(reference_code[None])[0]
        else:
            reference_code, reference_image = load_reference(config.reference.source, config.reference.path,
                                                             generator)
        check = None
        if config.reference.check_repeats > 0:
            check = measure_reference(config, subject, reference_image)
            if not check.passed:
                if recorder is not None and hasattr(recorder, "finish"):
                    recorder.finish("failed")
                raise ReferenceAtBaseline(check.message(config.reference.source))

        if config.mode != "maximize":
            search = build_search(config, generator, stages, reference_code=reference_code,
                                  reference_image=reference_image,
                                  natural_threshold=natural_threshold(config, generator, subject))
            phase = Phase(config.mode, search)
            task = bar.add_task(config.mode, total=config.generations) if bar else None
            _run_phase(phase, runner(config.mode, search, reference_image), rigs[config.mode], bar, task)
            phases.append(phase)
    finally:
        if bar is not None:
            bar.stop()

    final = phases[-1]
    verification = None
    if config.mode != "maximize" and config.noise.kind == "poisson" and config.verify_candidates > 0:
        verification = verify_selection(config, subject, generator, final)
    selected_image = generator.render(final.selection.code[None])[0]
    evaluation = _evaluate(config, subject, reference_image, selected_image, final)
    if verification is not None:
        evaluation["verification"] = verification  # (its presentations are counted there, not in the probe's)
    if check is not None:
        evaluation["reference_check"] = check.as_dict()
    return RunResult(config, generator, subject, reference_code, reference_image, phases, selected_image, evaluation,
                     check)


def verify_selection(config: ProbeConfig, subject: Subject, generator: ImageGenerator,
                     final: Phase) -> dict[str, Any] | None:
    """Choose the reported image again from fresh measurements (in silico, under noise): the search's
    established candidates give a floor, then the plausible better ones race for it
    (server/engine/verify.py), within ``verify_budget`` presentations.
    ``final.selection`` is replaced by the verified choice; when no candidate is plausible at all the
    search's own choice stays."""
    conf = final.search.confirmation
    if conf is None or not conf.d_low:
        return None
    mode, kappa = config.mode, config.confirm_kappa
    established, racers = candidates(conf, mode, tolerance=config.retention_tolerance,
                                     target_change=config.target_change, kappa=kappa)
    if not established and not racers(None):
        return {"candidates": 0, "presentations": 0, "chosen": None}

    window = config.noise.window_ms / 1000.0
    seed = SeedStreams(config.seed).noise_seed("verify")
    rates_of: dict[int, np.ndarray] = {}  # noise-free rates of each shown candidate

    def measure(cid: int, first: int, n: int) -> np.ndarray:
        if cid not in rates_of:
            image = generator.render(conf.codes[cid][None])
            rates_of[cid] = subject.rate(as_displayed(image)).astype(np.float64)[0]
        return np.array([np.mean(presentation_counts(rates_of[cid], window, presentation_rng(seed, cid + 1, first + s)))
                         for s in range(n)]) / window

    race = Race(mode, reference_rate=conf.reference_rate, dispersion=conf.dispersion,
                reference_se=float(np.sqrt(conf.dispersion * conf.reference_rate / max(conf.ref_n, 1))),
                tolerance=config.retention_tolerance, target_change=config.target_change,
                kappa=kappa)
    verdict = race.run(established, racers, measure,
                       budget=config.verify_budget, pass_after=config.verify_repeats,
                       looks=doubling_looks(config.verify_repeats), consecutive=config.verify_candidates,
                       lineage=lineages(conf, final.search._confirm_where))

    def where(rung):
        g, i = final.search._confirm_where[rung.cid]
        return {"generation": g, "index": i, "role": rung.role, "shows": rung.shows,
                "rate_hz": float(rung.mean), "verdict": rung.verdict}
    chosen = None
    if verdict.chosen is not None:
        rung = verdict.chosen
        g, i = final.search._confirm_where[rung.cid]
        stage = final.search.probe.stages[0]
        final.selection = Selection(g, i, conf.codes[rung.cid].copy(), np.array([rung.mean]),
                                    {stage: float(conf.d_low[rung.cid]), UNIT: float(abs(rung.mean - race.ref))})
        chosen = where(rung) | {"se_hz": race.se(rung),
                                "passed": rung.verdict == "passed"}
    return {"candidates": len(verdict.rungs), "repeats": config.verify_repeats,
            "presentations": verdict.presentations, "reference_rate_hz": float(conf.reference_rate),
            "tested": [where(r) for r in verdict.rungs], "chosen": chosen}


def _evaluate(config, subject, reference_image, selected_image, final: Phase) -> dict[str, Any]:
    rates = subject.rate(selected_image[None].astype(np.float32)).mean(1)
    out: dict[str, Any] = {
        "mode": config.mode,
        "generations": len(final.reports),
        "presentations": sum(len(r.responses) for r in final.reports)
        + (config.reference_repeats * len(final.reports) if config.mode != "maximize" else 0),
        "selected_generation": final.selection.generation,
        "selected_rate_hz": float(rates[0]),
    }
    if reference_image is None:
        return out
    retention, stretch = retention_and_stretch(subject, reference_image, selected_image[None])
    controls = affine_control_table(subject, reference_image)
    kept = [c for c in controls if abs(c["retention"] - 1.0) <= config.retention_tolerance]  # two-sided
    out.update(
        reference_rate_hz=float(subject.rate(reference_image[None].astype(np.float32)).mean()),
        retention=float(retention[0]),
        stretch=float(stretch[0]),
        max_pixel_distance=max_pixel_distance(reference_image),
        distances={k: float(v) for k, v in final.selection.distances.items()} if config.mode != "maximize" else {},
        affine_controls=controls,
        best_affine_stretch_at_90=max((c["stretch"] for c in kept), default=0.0),
    )
    if config.mode == "maximize":
        return out
    name = final.search.probe.stages[0]  # the claim compares distances where the probe stretched
    pixels = any(s.key == name and s.name == "pixel" for s in config.stages)
    stage = None if pixels else final.search.stages[name]
    out["controls"] = control_table(subject, reference_image, selected_image, config.mode,
                                    tolerance=config.retention_tolerance, target_change=config.target_change,
                                    seed=config.seed, stage=stage, stage_name=name)
    out["claim"] = out["controls"]["claim"]
    out["claim_holds"] = out["controls"]["claim_holds"]
    return out


# -- outputs -----------------------------------------------------------------------------------
def write_outputs(result: RunResult, folder: Path | None = None) -> dict[str, Path]:
    """summary.json, front.png (fronts over generations), grid.png (final front beside the reference),
    selected.png and reference.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    folder = Path(folder or result.config.output)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}

    def save_png(name, img):
        p = folder / name
        Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(p)
        paths[name] = p

    save_png("selected.png", result.selected_image)
    if result.reference_image is not None:
        save_png("reference.png", result.reference_image)

    phase = result.probe
    summary = {
        "config": config_record(result.config),
        "evaluation": result.evaluation,
        "per_generation": [
            {
                "generation": r.generation,
                "mean_response_hz": float(r.responses.mean()),
                "max_response_hz": float(r.responses.mean(1).max()),
                "front_size": int((r.fronts == 0).sum()),
                "reference_response_hz": float(r.reference_response.mean()),
            }
            for r in phase.reports
        ],
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    paths["summary.json"] = folder / "summary.json"

    fig, ax = plt.subplots(figsize=(6, 4.5))
    if result.config.mode == "maximize":
        g = [r.generation for r in phase.reports]
        ax.plot(g, [r.responses.mean(1).max() for r in phase.reports], label="best")
        ax.plot(g, [r.responses.mean() for r in phase.reports], label="mean")
        ax.set_xlabel("generation"), ax.set_ylabel("response (Hz)"), ax.legend()
        ax.set_title("activation maximisation")
    else:
        hist = phase.search.front_history()
        cmap = plt.get_cmap("viridis")
        for g, pts in hist:
            ax.scatter(pts[:, 0], pts[:, -1], s=8, color=cmap(g / max(1, len(hist) - 1)))
        sel = phase.selection
        ax.scatter([sel.distances[phase.search.probe.stages[0]]], [sel.distances[UNIT]], marker="*", s=200,
                   color="red", label="selected")
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, max(1, len(hist) - 1)))
        fig.colorbar(sm, ax=ax, label="generation")
        ax.set_xlabel(f"distance in stage '{phase.search.probe.stages[0]}'")
        ax.set_ylabel("|r(x) - r(ref)| (Hz)")
        ax.set_title(f"{result.config.mode} probe: first fronts over generations")
        ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "front.png", dpi=110)
    plt.close(fig)
    paths["front.png"] = folder / "front.png"

    if "controls" in result.evaluation:
        paths["controls.png"] = _plot_controls(plt, result.evaluation["controls"], folder / "controls.png")

    # Final front images beside the reference.
    if result.config.mode != "maximize":
        last = phase.reports[-1]
        proposal_codes = [c for g, c in zip(phase.search.pool.generation, phase.search.pool.codes) if g == last.generation]
        imgs = [result.reference_image] + list(result.generator.render(np.array(proposal_codes))[:15])
        titles = ["reference"] + [f"front #{i}" for i in range(len(imgs) - 1)]
    else:
        imgs, titles = [result.selected_image], ["most exciting image"]
    cols = min(4, len(imgs))
    rows = int(np.ceil(len(imgs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, t in zip(axes.ravel(), imgs, titles):
        ax.imshow(np.clip(img, 0, 1))
        ax.set_title(t, fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "grid.png", dpi=110)
    plt.close(fig)
    paths["grid.png"] = folder / "grid.png"
    return paths


def _plot_controls(plt, c: dict, path: Path) -> Path:
    """Retention against stretch: the contrast and noise paths, the affine controls and the probe's image."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, style in (("contrast", "-"), ("noise", "--")):
        cur = c["curves"][name]
        ax.plot(cur["stretch"], cur["retention"], style, label=f"{name} control")
    ax.scatter([a["stretch"] for a in c["affine"]], [a["retention"] for a in c["affine"]], s=14, color="grey",
               label="affine controls (black padding)")
    p = c["probe"]
    ax.scatter([p["stretch"]], [p["retention"]], marker="*", s=220, color="red", label=f"{c['mode']} probe", zorder=5)
    if c["mode"] == "invariance":
        ax.axhspan(1 - c["tolerance"], 1 + c["tolerance"], color="green", alpha=0.12, label="kept (two-sided)")
    else:
        ax.axvline(p["stretch"], color="red", lw=0.8, ls=":")
    stage = c.get("stretch_stage", "pixel")
    ax.set_xlabel("stretch (pixel distance / max pixel distance)" if stage == "pixel"
                  else f"stretch (distance in stage '{stage}' / the reference's norm there)")
    ax.set_ylabel("retention r(x) / r(reference)")
    ax.set_title(f"claim '{c['claim']}': {'true' if c['claim_holds'] else 'false'}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
