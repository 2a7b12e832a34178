"""Several probes in one process, their model calls batched: each probe runs on its own thread exactly as it
runs alone (its own seeded optimizer, noise and stored session), but a call of a shared torch model (the
DeePSiM generator's ``render``, a ``cnn`` stage's or a ``cnn-unit``'s ``features``) waits until every probe
still running is waiting on such a call; then all waiting calls of one model run as shared forward passes
(``render_many`` / ``features_many``) and each probe gets its own rows back.

So the probes advance in lockstep, one generation's model work in one batch on the device, which is what
lets several probes share a GPU efficiently. A probe that finishes or fails ``leave``s and the others no
longer wait for it. A shared pass that raises is retried call by call, so an error reaches only the probe
whose call caused it. Used by sweeps (``[resources] batch_probes``, server/sweep/group.py).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator

import numpy as np


class _Call:
    __slots__ = ("owner", "model", "many", "one", "rows", "result", "error", "done")

    def __init__(self, owner: int, model: Any, many: Callable, one: Callable, rows: np.ndarray):
        self.owner, self.model, self.many, self.one, self.rows = owner, model, many, one, rows
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


class Lockstep:
    """The meeting point of ``participants`` probe threads (each enters with ``participant(i)``)."""

    def __init__(self, participants: int):
        self._cv = threading.Condition()
        self._active = participants
        self._waiting: list[_Call] = []
        self._local = threading.local()
        self.passes = 0  # shared calls run (one per model per meeting), for benchmarks and tests
        self.calls = 0  # the probes' calls they served

    @contextlib.contextmanager
    def participant(self, index: int) -> Iterator[None]:
        """Run the body as probe ``index``; leaving (normally or by an exception) releases the others."""
        self._local.index = index
        try:
            yield
        finally:
            self._local.index = None
            with self._cv:
                self._active -= 1
                self._flush_if_all_waiting()

    def call(self, model: Any, many: Callable, one: Callable, rows: np.ndarray):
        """``one(rows)`` as this probe's share of ``many([rows of every waiting probe])``."""
        index = getattr(self._local, "index", None)
        if index is None or len(rows) == 0:  # not one of the probes (e.g. a helper thread), or nothing to share
            return one(rows)
        c = _Call(index, model, many, one, rows)
        with self._cv:
            self._waiting.append(c)
            self._flush_if_all_waiting()
            while not c.done:
                self._cv.wait()
        if c.error is not None:
            raise c.error
        return c.result

    def _flush_if_all_waiting(self) -> None:
        """(With the lock held.) Once every active probe waits, run all waiting calls, one batch per model."""
        if not self._waiting or len(self._waiting) < self._active:
            return
        calls = sorted(self._waiting, key=lambda c: c.owner)  # the same packing whatever the arrival order
        self._waiting = []
        groups: dict[int, list[_Call]] = {}
        for c in calls:
            groups.setdefault(id(c.model), []).append(c)
        for group in groups.values():
            self._run(group)
        self._cv.notify_all()

    def _run(self, group: list[_Call]) -> None:
        try:
            if len(group) > 1:
                try:
                    for c, r in zip(group, group[0].many([c.rows for c in group]), strict=True):
                        c.result, c.done = r, True
                    self.passes += 1
                    self.calls += len(group)
                    return
                except Exception:  # noqa: BLE001 - retried call by call below: the error reaches its own probe
                    pass
            for c in group:  # one call (run as its probe alone would), or the retry
                try:
                    c.result = c.one(c.rows)
                except Exception as exc:  # noqa: BLE001 - handed to the probe that made the call
                    c.error = exc
                c.done = True
                self.passes += 1
                self.calls += 1
        finally:
            for c in group:  # never leave a probe waiting, whatever happened
                if not c.done:
                    c.error, c.done = RuntimeError("the shared model call was interrupted"), True


class _Shared:
    """A shared model seen by one probe: every attribute is the model's, except the batched method."""

    def __init__(self, model: Any, lockstep: Lockstep):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_lockstep", lockstep)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class SharedGenerator(_Shared):
    """A generator whose ``render`` joins the lockstep (the model has ``render_many``)."""

    def render(self, codes: np.ndarray) -> np.ndarray:
        return self._lockstep.call(self._model, self._model.render_many, self._model.render, codes)


class SharedStage(_Shared):
    """A stage whose ``features`` joins the lockstep (the model has ``features_many``)."""

    def features(self, images: np.ndarray) -> np.ndarray:
        return self._lockstep.call(self._model, self._model.features_many, self._model.features, images)
