"""Probes that share a GPU by batching their generations: ``[resources] batch_probes = N`` groups up to N
probes that use the same torch models (DeePSiM generator, ``cnn`` stages, the network of a ``cnn-unit``,
same weights) into one Ray task. There each probe runs on its own thread exactly as `snslab insilico` runs
it (run_probe_task: its own seeded optimizer, noise, stored sessions and outcome), while the shared models'
calls of all its probes meet and run as shared forward passes (server/engine/lockstep.py).

Probes without torch models have nothing to batch and stay one per task.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable

from server.engine.generators import GENERATORS
from server.engine.lockstep import Lockstep, SharedGenerator, SharedStage
from server.engine.stages import STAGES

_UNIT_OWN = ("unit", "baseline", "gain")  # a cnn-unit's own parameters; the rest is its network's


def _params(table: dict[str, Any], drop=("name", "label")) -> dict[str, Any]:
    return {k: v for k, v in table.items() if k not in drop}


def _text(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def group_key(config: dict[str, Any]) -> str | None:
    """What a probe's batched models are (as JSON), or None when it has none (nothing to batch)."""
    shared: dict[str, Any] = {}
    gen = config.get("generator") or {}
    if hasattr(GENERATORS.get(gen.get("name")), "render_many"):
        shared["generator"] = gen
    subject = config.get("subject") or {}
    if subject.get("name") == "cnn-unit":
        shared["network"] = _params(subject, ("name",) + _UNIT_OWN)
    tables = [s if isinstance(s, dict) else {"name": s} for s in config.get("stages") or []]
    stages = [_params(s, ("label",)) for s in tables if hasattr(STAGES.get(s.get("name")), "features_many")]
    if stages:
        shared["stages"] = stages
    return _text(shared) if shared else None


def group_probes(probes: list, size: int) -> list[list]:
    """Probes (each with ``.config``) in groups of at most ``size`` sharing a ``group_key``, in grid order;
    a key's probes are split into groups of even sizes (10 probes, size 8: 5 + 5), probes without batched
    models alone."""
    if size <= 1:
        return [[p] for p in probes]
    by_key: dict[str, list[int]] = {}
    groups: list[list[int]] = []
    for i, p in enumerate(probes):
        key = group_key(p.config)
        if key is None:
            groups.append([i])
        else:
            by_key.setdefault(key, []).append(i)
    for members in by_key.values():
        n = -(-len(members) // size)
        bounds = [round(k * len(members) / n) for k in range(n + 1)]
        groups += [members[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return [[probes[i] for i in g] for g in sorted(groups)]


class SharedModels:
    """``build_generator`` / ``build_subject`` / ``build_stages`` (server/probe_setup.py) for the probes of
    one group: torch models are built once per set of parameters and shared through the lockstep; every
    other model is built per probe as usual. Errors are those of a probe built alone."""

    def __init__(self, lockstep: Lockstep, like: "SharedModels | None" = None):
        self.lockstep = lockstep
        self._models: dict[str, Any] = {}  # ``like``'s models (already built) join this lockstep
        if like is not None:
            self._models = {k: type(v)(v._model, lockstep) for k, v in like._models.items()}
        self._lock = threading.Lock()

    def _shared(self, key: str, build):
        with self._lock:  # the first probe builds it; the others wait for it (not in the lockstep)
            if key not in self._models:
                self._models[key] = build()
            return self._models[key]

    def build_generator(self, config):
        from server.probe_setup import build_generator

        if not hasattr(GENERATORS.get(config.generator.name), "render_many"):
            return build_generator(config)
        return self._shared("generator " + _text([config.generator.name, config.generator.params]),
                            lambda: SharedGenerator(build_generator(config), self.lockstep))

    def _network(self, params: dict[str, Any], build) -> SharedStage:
        return self._shared("cnn " + _text(params), lambda: SharedStage(build(), self.lockstep))

    def build_subject(self, config, generator):
        from server.engine.subjects import CNNUnit, make_subject
        from server.probe_setup import build_subject

        if config.subject.name != "cnn-unit":
            return build_subject(config, generator)
        params = config.subject.params
        network = {k: v for k, v in params.items() if k not in _UNIT_OWN}
        stage = self._network(network, lambda: make_subject("cnn-unit", **params).stage)  # validated in full
        return CNNUnit.on_stage(stage, **{k: params[k] for k in _UNIT_OWN if k in params})

    def build_stages(self, config) -> dict:
        from server.engine.stages import make_stage
        from server.probe_setup import build_stages

        def make(name: str, **params):
            if name == "cnn":  # (a cnn-unit on the same network and layer shares it)
                return self._network(params, lambda: make_stage(name, **params))
            return make_stage(name, **params)

        return build_stages(config, make=make)


def run_together(n: int, work: Callable[[int, SharedModels], Any],
                 like: SharedModels | None = None) -> tuple[list[Any], Lockstep]:
    """``work(i, models)`` for i < n, each on its own thread, their shared models' calls batched (the models
    ``like`` built already reused); returns each one's result (or the exception it raised) and the lockstep
    (its counts of shared passes)."""
    lockstep = Lockstep(n)
    models = SharedModels(lockstep, like)
    out: list[Any] = [None] * n

    def one(i: int) -> None:
        with lockstep.participant(i):
            try:
                out[i] = work(i, models)
            except Exception as exc:  # noqa: BLE001 - returned to the caller, the others go on
                out[i] = exc

    threads = [threading.Thread(target=one, args=(i,), name=f"probe-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, lockstep


def run_group_task(db_url: str, probes: list[tuple[int, int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run probes (id, attempt, config) together, each recording its own outcome (run_probe_task);
    returns their results in order."""
    from server.sweep.task import _database, run_probe_task

    _database(db_url)  # one connection pool for the group, made before the threads need it
    out, _ = run_together(len(probes), lambda i, models: run_probe_task(db_url, *probes[i], models=models))
    return [r if isinstance(r, dict) else  # the database failing under the task: the driver records it
            {"status": "failed", "error": f"{type(r).__name__}: {r}".splitlines()[0][:2000], "seconds": 0.0}
            for r in out]
