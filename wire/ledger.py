"""The server's record of dispatched presentations: what is outstanding, and exactly-once reports.

Rule (docs/protocol.md, "Restarts"): a presentation is outstanding from the moment its batch is handed
to the transport until its first presentation_report arrives. A later report with the same id is a
duplicate (acknowledge it, do not persist it). On every hello of a display client the server re-sends
:meth:`PresentationLedger.outstanding_batches`: each original batch cut down to its unreported
presentations, with only the images those need. A re-delivery keeps the presentation's ``attempt``: it is the
same presentation (same id); showing a slot again is a *new* presentation with its own id and a higher
attempt, stored by the server (``SessionRunner.reshow``). The client skips ids it already holds, so
resending too much is harmless and resending too little is impossible. Example::

    ledger = PresentationLedger()
    ledger.add_batch(batch, blobs)                    # right before endpoint.send_to(display, ...)
    status = ledger.record(report)                    # "new" -> persist; "duplicate"/"unknown" -> don't
    for b, bl in ledger.outstanding_batches():        # in on_hello(client, new_instance)
        endpoint.send_to(client.client_id, "stimulus_batch", b, bl)

Pure bookkeeping (no I/O), so the server can rebuild it from its database after a restart.
"""

from __future__ import annotations

from typing import Literal, Sequence

from wire.messages import Presentation, PresentationReport, StimulusBatch


class PresentationLedger:
    def __init__(self) -> None:
        self._batches: dict[str, tuple[StimulusBatch, list[bytes]]] = {}
        self._batch_of: dict[str, str] = {}  # presentation id -> batch id
        self.reports: dict[str, PresentationReport] = {}  # first report per presentation id
        self.cancelled: set[str] = set()
        self.duplicates = 0

    def add_batch(self, batch: StimulusBatch, blobs: Sequence[bytes | memoryview]) -> None:
        """Record a batch as dispatched. Presentation ids must be new to this ledger."""
        if batch.batch_id in self._batches:
            raise ValueError(f"batch_id: {batch.batch_id!r} already dispatched")
        for p in batch.presentations:
            if p.presentation_id in self._batch_of:
                raise ValueError(f"presentation_id: {p.presentation_id!r} already dispatched")
        self._batches[batch.batch_id] = (batch, [bytes(b) for b in blobs])
        for p in batch.presentations:
            self._batch_of[p.presentation_id] = batch.batch_id

    def record(self, report: PresentationReport) -> Literal["new", "duplicate", "unknown"]:
        """Account for one report: only the first of each dispatched presentation is "new"."""
        pid = report.presentation_id
        if pid not in self._batch_of:
            return "unknown"
        if pid in self.reports:
            self.duplicates += 1
            return "duplicate"
        self.reports[pid] = report
        return "new"

    def cancel(self, presentation_ids: Sequence[str] | None = None) -> int:
        """Stop expecting these (default: all outstanding) presentations, e.g. after a control clear."""
        ids = self.outstanding() if presentation_ids is None else [p for p in presentation_ids if p not in self.reports]
        self.cancelled.update(ids)
        return len(ids)

    def outstanding(self) -> list[str]:
        """Dispatched, not reported, not cancelled presentation ids, in dispatch then display order."""
        return [p.presentation_id for p in self._outstanding_presentations()]

    def _outstanding_presentations(self) -> list[Presentation]:
        out = []
        for batch, _ in self._batches.values():
            for p in sorted(batch.presentations, key=lambda q: q.order):
                if p.presentation_id not in self.reports and p.presentation_id not in self.cancelled:
                    out.append(p)
        return out

    @property
    def complete(self) -> bool:
        return not self.outstanding()

    def outstanding_batches(self) -> list[tuple[StimulusBatch, list[bytes]]]:
        """Original batches cut down to their outstanding presentations (images re-indexed, same attempt)."""
        return self.batches_with(set(self.outstanding()))

    def batches_with(self, presentation_ids: set[str]) -> list[tuple[StimulusBatch, list[bytes]]]:
        """Original batches cut down to these presentations (images re-indexed), e.g. everything still
        waiting for counts, for a restarted simulated rig."""
        out = []
        for batch, blobs in self._batches.values():
            todo = [p for p in batch.presentations if p.presentation_id in presentation_ids]
            if not todo:
                continue
            used = sorted({p.image for p in todo})
            index = {old: new for new, old in enumerate(used)}
            pres = [p.model_copy(update={"image": index[p.image]}) for p in todo]
            sub = StimulusBatch(
                batch_id=batch.batch_id, generation=batch.generation,
                images=[batch.images[i] for i in used], presentations=pres,
            )  # fmt: skip
            out.append((sub, [blobs[i] for i in used]))
        return out
