"""``snslab rescore`` and ``snslab export`` (registered by server.analysis.cli)."""

from __future__ import annotations

from pathlib import Path

import typer

EXPORT_HELP = """Export a stored session: an NWB file (pynwb; the form DANDI accepts) and/or a CSV table.

The NWB file holds the subject and session metadata, the rig and its units with their spike times, every image shown (Images) and what was shown when (IndexSeries), a stimulus_presentations table (onset, offset, onset source, generation, kind, image, valid, QC reasons, online counts per unit), the optimizer's scores, generations and selection (processing module 'optimizer'), and the session's config (notes). Check it with `nwbinspector --config dandi OUT.nwb`.

Metadata come from --metadata FILE (TOML or YAML with the fields species, subject_id, age, sex, experimenter, lab, institution, session_description, subject_description, electrode_location) and the options below, which win.

The CSV (DIR/presentations.csv) has one row per presentation and unit.

Example:  snslab export 3f1c...e2 --nwb m1-2026-12-04.nwb --species "Macaca mulatta" --age P6Y --sex M --lab "V1 lab" --institution "Example University" --experimenter "Doe, Jane" --csv m1-csv/
"""


def register_more(app, _session_id, _errors, _progress, _repo, _fail) -> None:
    _register_rescore(app, _session_id, _errors, _progress, _repo, _fail)

    @app.command(help=EXPORT_HELP)
    def export(
        session: str = typer.Argument(..., help="the stored session's id"),
        nwb: Path | None = typer.Option(None, "--nwb", help="write the NWB file here"),
        csv: Path | None = typer.Option(None, "--csv", help="write DIR/presentations.csv (one row per presentation and unit)"),
        metadata: Path | None = typer.Option(None, "--metadata", help="TOML or YAML file of metadata fields"),
        species: str | None = typer.Option(None, help="Latin binomial, e.g. 'Macaca mulatta'"),
        subject_id: str | None = typer.Option(None, "--subject-id", help="default: the session's subject id"),
        age: str | None = typer.Option(None, help="ISO 8601 duration, e.g. P6Y"),
        sex: str | None = typer.Option(None, help="M | F | U | O"),
        experimenter: list[str] = typer.Option([], help="'Last, First' (repeatable); default: the operator"),
        lab: str | None = typer.Option(None, help="lab name"),
        institution: str | None = typer.Option(None, help="institution name"),
        session_description: str | None = typer.Option(None, "--session-description", help="one paragraph"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    ) -> None:
        import time

        from .nwb_export import SessionData, export_csv, export_nwb, load_metadata

        sid = _session_id(session)
        if nwb is None and csv is None:
            _fail("give --nwb OUT.nwb and/or --csv DIR")
        with _errors():
            meta = load_metadata(metadata, species=species, subject_id=subject_id, age=age, sex=sex,
                                 experimenter=list(experimenter), lab=lab, institution=institution,
                                 session_description=session_description)
            if nwb is not None:
                meta.check()
            repo = _repo()
            t = time.perf_counter()
            data = SessionData.load(repo, sid)
            if nwb is not None:
                with _progress("exporting NWB", quiet) as update:
                    info = export_nwb(repo, sid, nwb, meta, progress=update, data=data)
                typer.echo(f"wrote {nwb}: {info['presentations']} presentations, {info['images']} images, "
                           f"{info['units']} units with {info['spikes']} spike times, {info['scores']} scores "
                           f"({time.perf_counter() - t:.1f} s)")
            if csv is not None:
                path = export_csv(repo, sid, csv, data=data)
                typer.echo(f"wrote {path}")


RESCORE_HELP = """Re-score a stored invariance/adversarial session on another representation stage (or with re-counted responses): what would the fronts and the selected image have been?

The images are the stored ones (as displayed) and the optimizer's trajectory is what it was; each generation's scored candidates get the new stage's distance to the reference and the unit's distance to the running reference response (stored counts, or those of a `snslab recount` analysis with --counts), then the engine's own Pareto code recomputes the fronts and the selected image. Stored as a new analysis (its id is printed); the session's rows are never modified. Prints what changed.

Stages: pixel | gabor-energy | cnn:ARCHITECTURE:LAYER (a torchvision model; --stage-param weights=FILE loads a state dict, nothing is downloaded); --stage-param NAME=VALUE sets any stage parameter.

Example:  snslab rescore 3f1c...e2 --stage cnn:resnet50:layer3 --stage-param weights=resnet50.pth --counts 12
"""


def _param(text: str) -> tuple[str, object]:
    import json

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"stage-param: {text!r} is not NAME=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _register_rescore(app, _session_id, _errors, _progress, _repo, _fail) -> None:
    @app.command(help=RESCORE_HELP)
    def rescore(
        session: str = typer.Argument(..., help="the stored session's id"),
        stage: str = typer.Option(..., "--stage", help="pixel | gabor-energy | cnn:ARCHITECTURE:LAYER"),
        stage_param: list[str] = typer.Option([], "--stage-param", help="stage parameter NAME=VALUE (repeatable)"),
        counts: int | None = typer.Option(None, "--counts", help="id of a `snslab recount` analysis to score with"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    ) -> None:
        from .rescore import rescore as run

        sid = _session_id(session)
        with _errors():
            params = dict(_param(p) for p in stage_param)
            with _progress("rescoring", quiet) as update:
                res = run(_repo(), sid, stage, params, counts_analysis=counts, progress=update)
        typer.echo(f"analysis {res.analysis_id}: rescored {res.scored} candidates of {res.generations} generations "
                   f"of session {sid} on stage {res.stage}" + (f" with the counts of analysis {counts}" if counts else ""))
        typer.echo(f"first fronts: {res.front0_online} candidates online, {res.front0_new} rescored; "
                   f"{res.front0_changed} changed membership")
        for g in res.per_generation:
            typer.echo(f"  generation {g['generation']}: first front {g['front0_online']} -> {g['front0_rescored']} "
                       f"({g['changed']} changed)")

        def pick(p) -> str:
            if p is None:
                return "none"
            d = ", ".join(f"{k} {v:.4g}" for k, v in p.distances.items())
            return f"generation {p.generation}, candidate {p.code_index} (presentation {p.presentation_id}; {d})"

        typer.echo(f"selected online:   {pick(res.online)}")
        typer.echo(f"selected rescored: {pick(res.rescored)}")
        same = res.online is not None and res.rescored is not None and \
            res.online.presentation_id == res.rescored.presentation_id
        typer.echo("the selected image is the same" if same else "the selected image changed")
