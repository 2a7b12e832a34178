"""Continue optimizer snapshots in a fresh process (helper for tests/test_engine_optimizers.py).

usage: python tests/optimizer_resume_child.py GENERATIONS STATE_FILE OUT_FILE [STATE_FILE OUT_FILE ...]

For each snapshot: restore it, tell the pending population if the snapshot was taken between ask and tell,
then run GENERATIONS more ask/tell rounds on ``fitness`` and save the asked codes to OUT_FILE (.npz).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def fitness(codes: np.ndarray) -> np.ndarray:
    """A fixed, deterministic weighted quadratic with its maximum at linspace(-1, 2, n)."""
    n = codes.shape[1]
    centre = np.linspace(-1.0, 2.0, n)
    weights = np.linspace(1.0, 4.0, n)
    return -np.sum(weights * (codes - centre) ** 2, axis=1)


def continue_run(opt, generations: int) -> dict[str, np.ndarray]:
    """Finish a pending generation, then run ``generations`` more; returns what the comparison needs."""
    out: dict[str, np.ndarray] = {}
    pending = opt.pending
    if pending is not None:
        out["pending_known"] = np.array(_pending_known(opt, pending))
        opt.tell(pending, fitness(pending))
    asked = []
    for _ in range(generations):
        codes = opt.ask()
        asked.append(codes)
        opt.tell(codes, fitness(codes))
    out["codes"] = np.stack(asked)
    out["mean"] = opt.mean
    out["sigma"] = np.array(opt.sigma)
    out["generation"] = np.array(opt.generation)
    return out


def _pending_known(opt, pending: np.ndarray) -> bool:
    """For pycma: are the asked codes still found in its archive (keys are per-process hashes)?"""
    es = getattr(opt, "_es", None)
    if es is None or not hasattr(es, "sent_solutions"):
        return True
    return all(row in es.sent_solutions for row in pending)


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from server.engine.optimizers import Optimizer

    generations = int(argv[0])
    pairs = argv[1:]
    for state_file, out_file in zip(pairs[::2], pairs[1::2]):
        opt = Optimizer.restore(Path(state_file).read_bytes())
        np.savez(out_file, **continue_run(opt, generations))


if __name__ == "__main__":
    main(sys.argv[1:])
