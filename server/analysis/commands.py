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
