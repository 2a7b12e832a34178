"""A sweep file (TOML): a base probe config and a grid (or a list) of changes to it, one probe per point.

    name = "resnet50-invariance"        # re-running a file with the same name resumes that sweep
    output = "runs/sweeps/resnet50"     # the Parquet table (probes.parquet) and the report go here

    [resources]                         # what each Ray task needs (one probe, or a group: batch_probes)
    num_cpus = 1
    num_gpus = 0                        # e.g. 0.25: four tasks share one GPU, each with its own passes
    batch_probes = 1                    # e.g. 8 with num_gpus = 1: up to 8 probes with the same torch
                                        # models in one task, their generations batched on the device

    [base]                              # a probe config exactly as for `snslab insilico` (see its --help)
    mode = "invariance"
    generations = 40
    [base.subject]
    name = "cnn-unit"

    [grid]                              # every combination (networks x layers x units x probes x seeds)
    networks = ["resnet50", {architecture = "resnet50", weights = "robust.pt", label = "robust"}]
    layers = ["layer3", "layer4"]
    units = [0, 1, [7], [7, 3, 3]]
    probes = ["invariance", {mode = "adversarial", label = "adv", bounds = {unit = ">10%"}}]
    seeds = [0, 1]

Axes (each optional): ``networks`` a string (subject.architecture) or a table merged into [subject];
``layers`` a string (subject.layer) or a table merged into [subject]; ``units`` an index or list
(subject.unit) or a table merged into [subject]; ``probes`` a mode or a table merged into the whole config;
``seeds`` integers. A ``label`` key in a table names that value in outputs. Instead of [grid], ``[[probe]]``
tables list the probes one by one (each merged into [base]; ``label`` names it). A ``cnn`` stage without an
``architecture`` measures distances in the subject's own network (its architecture, weights and seed).

``batch_probes = N`` (default 1) runs up to N probes that use the same torch models (DeePSiM generator,
``cnn`` stages, a ``cnn-unit``'s network, same weights) in one task: each probe runs as it runs alone, but
their generations go through the shared models in one batch; [resources] is then what each such task needs.
Results stay each probe's own (on the CPU in fp32 bit for bit those of `snslab insilico`). It is meant for
GPUs (several probes share one, e.g. num_gpus = 1, batch_probes = 8) where the network dominates a probe's
time: a group's probes share one process, so their own CPU work (optimizer, scoring, database writes) runs
one at a time. On the CPU it does not pay.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.config import parse_config
from server.engine.base import ConfigError

AXES = ("networks", "layers", "units", "probes", "seeds")
_TOP = {"name", "output", "resources", "base", "grid", "probe"}


@dataclass
class ProbeSpec:
    """One probe of a sweep: its grid labels, its complete probe config (as JSON) and that config's hash."""

    position: int
    labels: dict[str, Any]
    config: dict[str, Any]
    key: str


@dataclass
class SweepSpec:
    name: str
    output: Path
    num_cpus: float
    num_gpus: float
    probes: list[ProbeSpec]
    raw: dict[str, Any] = field(default_factory=dict)
    batch_probes: int = 1  # probes per Ray task, their torch model calls batched (server/sweep/group.py)


def merge(base: dict, patch: dict) -> dict:
    """Deep merge: tables merge key by key, anything else (lists included) replaces."""
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _label(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("label") or json.dumps({k: v for k, v in value.items() if k != "label"}, sort_keys=True))
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def _patch(axis: str, value: Any) -> dict:
    """The config change one axis value stands for."""
    table = {k: v for k, v in value.items() if k != "label"} if isinstance(value, dict) else None
    if axis == "seeds":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError("grid.seeds", f"bad seed {value!r}", "non-negative integers")
        return {"seed": value}
    if axis == "probes":
        if table is not None:
            return table
        if not isinstance(value, str):
            raise ConfigError("grid.probes", f"bad value {value!r}", "a mode name or a table of config changes")
        return {"mode": value}
    if table is not None:
        return {"subject": table}
    if axis == "networks":
        if not isinstance(value, str):
            raise ConfigError("grid.networks", f"bad value {value!r}", "a torchvision model name or a table")
        return {"subject": {"architecture": value}}
    if axis == "layers":
        if not isinstance(value, str):
            raise ConfigError("grid.layers", f"bad value {value!r}", "a layer name or a table")
        return {"subject": {"layer": value}}
    return {"subject": {"unit": value}}  # units: an index or a position list


def _inherit_network(cfg: dict) -> dict:
    """A cnn stage without an architecture/module measures in the subject's own network."""
    subject = cfg.get("subject") or {}
    if subject.get("name") != "cnn-unit":
        return cfg
    stages = []
    for st in cfg.get("stages", []):
        if isinstance(st, dict) and st.get("name") == "cnn" and "architecture" not in st and "module" not in st:
            st = dict(st)
            for k in ("architecture", "weights", "seed"):
                if k in subject and k not in st:
                    st[k] = subject[k]
        stages.append(st)
    if stages:
        cfg = dict(cfg, stages=stages)
    return cfg


def config_key(config: dict) -> str:
    """The hash that identifies a probe within its sweep: same config, same probe."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:20]


def load_sweep(path: str | Path) -> SweepSpec:
    """Parse and expand a sweep file; every probe's config is validated (errors name the probe and field)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("sweep", f"file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("sweep", f"{path} is not valid TOML: {err}") from None
    return expand(raw, default_name=path.stem)


def expand(raw: dict, default_name: str = "sweep") -> SweepSpec:
    for k in raw:
        if k not in _TOP:
            raise ConfigError(k, "unknown field", sorted(_TOP))
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("name", f"bad value {name!r}", "a non-empty string")
    res = raw.get("resources", {})
    if not isinstance(res, dict) or set(res) - {"num_cpus", "num_gpus", "batch_probes"}:
        raise ConfigError("resources", f"bad value {res!r}", "num_cpus, num_gpus, batch_probes")
    batch_probes = res.get("batch_probes", 1)
    if isinstance(batch_probes, bool) or not isinstance(batch_probes, int) or batch_probes < 1:
        raise ConfigError("resources.batch_probes", f"bad value {batch_probes!r}",
                          "a positive integer (1: no batching)")
    num_cpus, num_gpus = res.get("num_cpus", 1), res.get("num_gpus", 0)
    for f, v in (("resources.num_cpus", num_cpus), ("resources.num_gpus", num_gpus)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f, f"bad value {v!r}", "a non-negative number")
    base = raw.get("base", {})
    if not isinstance(base, dict):
        raise ConfigError("base", "must be a table (a probe config as for `snslab insilico`)")
    if "grid" in raw and "probe" in raw:
        raise ConfigError("grid", "give either [grid] or [[probe]] tables, not both")

    points: list[tuple[dict, dict]] = []  # (labels, patch list merged)
    if "probe" in raw:
        items = raw["probe"]
        if not isinstance(items, list) or not all(isinstance(p, dict) for p in items) or not items:
            raise ConfigError("probe", "must be [[probe]] tables of config changes")
        for i, p in enumerate(items):
            patch = {k: v for k, v in p.items() if k != "label"}
            points.append(({"probe": str(p.get("label", i))}, patch))
    else:
        grid = raw.get("grid", {})
        if not isinstance(grid, dict):
            raise ConfigError("grid", "must be a table of axes", list(AXES))
        for k, v in grid.items():
            if k not in AXES:
                raise ConfigError(f"grid.{k}", "unknown axis", list(AXES))
            if not isinstance(v, list) or not v:
                raise ConfigError(f"grid.{k}", "must be a non-empty list")
        axes = [a for a in AXES if a in grid]
        for combo in itertools.product(*(grid[a] for a in axes)):
            labels, patch = {}, {}
            for axis, value in zip(axes, combo):
                labels[axis.rstrip("s") if axis != "probes" else "probe"] = value if axis == "seeds" else _label(value)
                patch = merge(patch, _patch(axis, value))
            points.append((labels, patch))

    output = Path(raw.get("output", f"runs/sweeps/{name}"))
    probes: list[ProbeSpec] = []
    seen: dict[str, int] = {}
    for i, (labels, patch) in enumerate(points):
        cfg = _inherit_network(merge(base, patch))
        try:
            probe = parse_config(cfg)
        except ConfigError as err:
            raise ConfigError(f"probe {i} ({', '.join(f'{k}={v}' for k, v in labels.items())}): {err.field}",
                              str(err).split(": ", 1)[1]) from None
        config = json.loads(probe.model_dump_json())
        config.pop("output", None)
        key = config_key(config)
        config["output"] = str(output / "probes" / key)
        if key in seen:
            raise ConfigError("grid", f"probes {seen[key]} and {i} are the same probe (identical configs)")
        seen[key] = i
        labels.setdefault("seed", probe.seed)
        labels.setdefault("mode", probe.mode)
        probes.append(ProbeSpec(i, labels, config, key))
    return SweepSpec(name, output, float(num_cpus), float(num_gpus), probes, raw, batch_probes)
