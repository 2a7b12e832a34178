"""Probe configuration: one pydantic model shared by ``snslab insilico``, the API and stored sessions.

Every field has a description; ``snslab insilico --help`` prints them. Bad values raise ``ConfigError``
with one line naming the field and what is allowed.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .engine.base import ConfigError
from .engine.probes import MODES


class _Named(BaseModel):
    """A registry name plus that component's own parameters (passed through to its constructor)."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class GeneratorConfig(_Named):
    name: str = Field("dct", description="image generator: dct | deepsim-fc6 | deepsim-fc7 | pixel")


class StageConfig(_Named):
    name: str = Field(description="representation stage: pixel | gabor-energy | cnn")
    label: str | None = Field(None, description="name used in outputs (default: the stage name)")

    @property
    def key(self) -> str:
        return self.label or self.name


class SubjectConfig(_Named):
    name: str = Field(
        "complex-cell", description="model unit: complex-cell | simple-cell | pooled-unit | mixed-unit | cnn-unit "
        "| python (your own: subject.factory = 'package.module:make', its other keys passed to make)"
    )


ADVERSARIAL_SIGMA0 = 0.7  # the shell search's perturbation angle scale (docs/benchmarks.md, issue 12)


class OptimizerConfig(_Named):
    name: str = Field("sepcma", description="optimizer: sepcma (default) | cma | genetic | shell (the "
                      "adversarial probe's default: shells around the reference, seeded along the contrast "
                      "control, radius bisected toward the target change; sigma0 0.7 there)")
    sigma0: float = Field(1.0, gt=0, description="initial step size in code units")


class NoiseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["poisson", "none"] = Field("poisson", description="spike-count noise of the in-silico subject")
    window_ms: float = Field(150.0, gt=0, description="response window length in ms (counts -> rates)")


class ReferenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Literal["maximize", "image", "code"] = Field(
        "maximize", description="maximize: find the unit's most exciting image first | image: a file | code: a .npy"
    )
    path: Path | None = Field(None, description="image file (any format Pillow reads) or .npy code file")
    generations: int = Field(40, ge=1, le=100_000, description="generations of the maximize run that finds the reference")
    check_repeats: int = Field(20, ge=0, le=10000, description="fresh presentations of the reference and of a "
                               "blank (mean-grey) screen before the probe starts: the reference's rate is "
                               "re-measured, not taken from the maximum of noisy measurements (0: no check)")
    min_ratio: float = Field(3.0, ge=0, description="the probe stops unless the re-measured reference rate is at "
                             "least this many times the blank screen's (baseline) rate")
    min_z: float = Field(3.0, ge=0, description="... and at least this many standard errors above it")


class MaximizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="optimizer of the maximize "
                                       "run that finds a probe's reference (the probe's own is [optimizer]; "
                                       "in mode = 'maximize' [optimizer] is used)")


class EarlyStopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="stop against the unit's responses to natural images")
    natural_images: int = Field(100, ge=5, description="number of synthetic 1/f natural-like images")
    min_generation: int = Field(5, ge=0, description="never stop before this generation")


class ProbeConfig(BaseModel):
    """A complete in-silico probe run."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    mode: str = Field("invariance", description="maximize | invariance | adversarial")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="session seed; every random choice derives from it")
    population: int = Field(20, ge=4, le=1000, description="new candidates per generation (more generations "
                            "beat wider ones at a fixed number of presentations: docs/benchmarks.md)")
    generations: int = Field(40, ge=1, le=100_000, description="budget of generations for the probe")
    start_from: Literal["noise", "reference"] = Field(
        "noise", description="where an invariance search starts: small noise around zero, a grey image (default, "
        "the published method; it finds far invariances such as a contrast-inverted MEI), or the reference's "
        "code (a local search; what docs/benchmarks.md compares all methods from). Adversarial searches start "
        "at the reference code.")
    reference_repeats: int = Field(4, ge=1, le=100, description="reference presentations per generation")
    lead_in: int = Field(2, ge=0, description="of the reference repeats, how many open each generation and are "
                         "planned ahead: the display shows them while the previous generation's last answers "
                         "arrive, so it never waits for the server (0: all repeats shuffled, display waits)")
    confirm: bool = Field(True, description="report the front that survives spike noise (shrunk rate estimates, "
                          "conservative bounds) instead of the front of single noisy measurements")
    retests: int = Field(10, ge=0, le=1000, description="presentations per generation that re-test plausible "
                         "front candidates (only under noise; 0: none)")
    confirm_kappa: float = Field(1.0, ge=0, description="standard errors by which the reported front is made "
                                 "conservative")
    far_reach: int = Field(2, ge=0, le=10, description="invariance probes: small search distributions ('bands') "
                           "beside the main one, each trading stretch against the change of response with its own "
                           "weight, started at the reference and seeded with its contrast-inverted, rotated and "
                           "mirrored copies (server/engine/far_reach.py; 0: off)")
    far_population: int = Field(5, ge=2, le=1000, description="new candidates per generation in each far-reach band")
    far_sigma0: float = Field(0.2, gt=0, description="initial step size of the far-reach bands in code units")
    far_generations: int = Field(60, ge=0, le=100_000, description="generations the far-reach bands search (then "
                                 "only the main search goes on: a band left at a partial response mostly adds "
                                 "noise impostors to the front)")
    far_restart: int = Field(6, ge=0, le=100_000, description="invariance probes: the reference's affine copies "
                             "and windows are also seeds, and after this many generations each far-reach band "
                             "restarts from the confirmed (re-tested, conservative) front (0: neither)")
    far_seed_repeats: int = Field(3, ge=1, le=100, description="invariance probes: showings of each far-reach "
                                  "seed in the first generation (a single noisy count makes a lottery of the seeds)")
    ordering: str | None = Field(None, description="within-front order: onevar | random | crowding")
    bounds: dict[str, str] = Field(default_factory=dict, description="per-stage bounds, e.g. {unit = '<10%'}")
    retention_tolerance: float = Field(0.1, gt=0, lt=1, description="an invariance image keeps the response when "
                                       "its rate is within +- this fraction of the reference's (two-sided)")
    verify_candidates: int = Field(12, ge=0, le=200, description="in silico under noise: the reported image is "
                                   "chosen again from fresh presentations; this many plausible candidates race in "
                                   "turn, the rest with doubling gaps (server/engine/verify.py; 0: report the "
                                   "search's own choice)")
    verify_repeats: int = Field(128, ge=2, le=10_000, description="fresh showings a verified image needs to pass; "
                                "it may fail after each doubling look from a sixteenth of this many")
    verify_budget: int = Field(768, ge=0, le=1_000_000, description="fresh showings the verification may spend in "
                               "all (it stops at the first candidate that passes)")
    target_change: float = Field(0.5, gt=0, le=1, description="the change an adversarial image aims for, as a "
                                 "fraction of the reference's rate (0.5: halve the response)")
    output: Path = Field(Path("runs/insilico"), description="folder for summary.json and the plots")
    stages: list[StageConfig] = Field(
        default_factory=lambda: [StageConfig(name="pixel")], description="upstream stages to stretch or squeeze"
    )
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    subject: SubjectConfig = Field(default_factory=SubjectConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    maximize: MaximizeConfig = Field(default_factory=MaximizeConfig)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    early_stop: EarlyStopConfig = Field(default_factory=EarlyStopConfig)

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in MODES:
            raise ValueError(f"unknown mode {v!r} (allowed: {', '.join(MODES)})")
        return v

    @field_validator("lead_in")
    @classmethod
    def _lead_in(cls, v: int, info) -> int:
        repeats = info.data.get("reference_repeats")
        if repeats is not None and v > repeats:
            raise ValueError(f"{v} is more than reference_repeats ({repeats}) (allowed: 0..reference_repeats)")
        return v

    @model_validator(mode="after")
    def _early_stop_start(self) -> "ProbeConfig":
        if self.early_stop.enabled and self.mode == "invariance" and self.start_from == "reference":
            raise ValueError("early_stop.enabled: the invariance early stop marks arrival from a noise start; "
                             "from the reference it fires at once (allowed: start_from = 'noise', or false)")
        return self

    @model_validator(mode="after")
    def _adversarial_search(self) -> "ProbeConfig":
        # The adversarial probe's default search is its own (server.engine.adversarial, issue 12); an
        # [optimizer] that names its optimizer keeps it. Recorded explicitly, so stored sessions replay.
        if self.mode == "adversarial" and "name" not in self.optimizer.model_fields_set:
            sigma0 = self.optimizer.sigma0 if "sigma0" in self.optimizer.model_fields_set else ADVERSARIAL_SIGMA0
            self.optimizer = OptimizerConfig(name="shell", sigma0=sigma0, **self.optimizer.params)
        return self

    @field_validator("stages", mode="before")
    @classmethod
    def _stages(cls, v):
        return [{"name": s} if isinstance(s, str) else s for s in v]


def config_record(config: BaseModel) -> dict[str, Any]:
    """The config as JSON data for outputs and storage. Objects passed through the Python API (a torch
    ``module=`` of a cnn-unit) are recorded by their type, never serialised: name a ``python`` subject's
    factory and its parameters instead to make a run reproducible from its record."""
    return json.loads(config.model_dump_json(
        fallback=lambda o: f"<{type(o).__module__}.{type(o).__qualname__} object: not recorded>"))


def _one_line(err: ValidationError) -> ConfigError:
    e = err.errors()[0]
    field = ".".join(str(p) for p in e["loc"]) or "config"
    msg = e["msg"].removeprefix("Value error, ")
    head, sep, rest = msg.partition(": ")
    if not e["loc"] and sep and " " not in head:  # a whole-config check names its own field
        field, msg = head, rest
    if e["type"] == "extra_forbidden":
        msg = "unknown field"
    allowed = None
    if e["type"] == "literal_error":
        allowed = e.get("ctx", {}).get("expected")
        msg = f"got {e.get('input')!r}"
    return ConfigError(field, msg, allowed)


def parse_config(data: dict[str, Any]) -> ProbeConfig:
    try:
        return ProbeConfig.model_validate(data)
    except ValidationError as err:
        raise _one_line(err) from None


def load_config(path: str | Path) -> ProbeConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", f"file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("config", f"{path} is not valid TOML: {err}") from None
    return parse_config(data)


def describe_fields(model: type[BaseModel] = ProbeConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted field, default, description) for every config field, for --help."""
    rows = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and name not in ("stages",):
            rows.extend(describe_fields(ann, f"{prefix}{name}."))
            continue
        default = f.get_default(call_default_factory=True)
        if name == "stages":
            default = ["pixel"]
        rows.append((prefix + name, repr(default) if default is not None else "-", f.description or ""))
    return rows
