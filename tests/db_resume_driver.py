"""A stand-in session loop that writes through the repository exactly as a live session would, so a test can
SIGKILL it anywhere and check that a restart finishes the session as if nothing had happened.

    python tests/db_resume_driver.py SESSION_ID --generations 6 [--pause G:K:PHASE] [--delay SECONDS]

DATABASE_URL names the database. The optimizer is a deterministic fake (a mean vector and a seeded numpy
Generator whose state is saved and restored bit for bit); the "neuron" answers each image with Poisson
counts seeded by the image's hash, so a re-shown image gets the same answer, as a deterministic rig would.

With ``--pause G:K:PHASE`` the loop prints PAUSED and waits (to be killed) in generation G, at batch slot K,
at PHASE: ``begun`` (proposals committed, nothing shown), ``shown`` (slot K's timing committed, its response
not yet), ``answered`` (slot K's response committed), ``told`` (tell done, scores not yet committed).
After a restart, presentations that were shown but never answered get their late answer (even slots) or
are re-shown (odd slots); answered ones have their response re-sent once (the bridge repeating itself),
which must count as a duplicate.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import uuid
from typing import TextIO

import numpy as np

from server.db.records import PresentationTiming, Proposal, ResponseRecord, ScoreRecord
from server.db.repository import Repository
from server.png import encode_png

N_UNITS = 6
CODE_SIZE = 5
POPULATION = 4
N_REFERENCE = 2
REFERENCE = encode_png(np.linspace(0, 1, 4 * 4 * 3).reshape(4, 4, 3))


class FakeOptimizer:
    """Stands in for CMA-ES: all state is a mean vector and a numpy Generator."""

    def __init__(self, seed: int):
        self.mean = np.zeros(CODE_SIZE)
        self.rng = np.random.default_rng(seed)

    def state(self) -> tuple[bytes, dict]:
        return self.mean.astype("<f8").tobytes(), self.rng.bit_generator.state

    def restore(self, state: bytes, rng_state: dict) -> None:
        self.mean = np.frombuffer(state, dtype="<f8").copy()
        self.rng.bit_generator.state = rng_state

    def ask(self) -> np.ndarray:
        return self.mean + 0.5 * self.rng.standard_normal((POPULATION, CODE_SIZE))

    def tell(self, codes: np.ndarray, fitness: np.ndarray) -> None:
        best = codes[int(np.argmax(fitness))]
        self.mean = 0.5 * self.mean + 0.5 * best + 0.01 * self.rng.standard_normal(CODE_SIZE)


def render(code: np.ndarray) -> bytes:
    img = 1.0 / (1.0 + np.exp(-np.resize(code, 4 * 4 * 3).reshape(4, 4, 3)))
    return encode_png(img)


def neuron(png: bytes) -> list[int]:
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(png).digest()[:8], "little"))
    return rng.poisson(3.0 + np.arange(N_UNITS)).tolist()


def show(repo: Repository, session_id: uuid.UUID, pid: int) -> None:
    """The display reports the onset (on its own clock; no rig clock in this loopback)."""
    timing = PresentationTiming(pid, "simulated", display_onset=time.monotonic(), rig_onset=None)
    repo.record_presentation_timing(session_id, timing)


def setup_session(repo: Repository, seed: int) -> uuid.UUID:
    sid = repo.create_session(
        config={"driver": "db_resume_driver", "population": POPULATION},
        seed=seed,
        mode="simulated",
        operator="test",
        subject_id="fake-neuron",
        rig="loopback",
    )
    repo.add_units(sid, [(ch, 1, f"ch{ch}") for ch in range(N_UNITS)])
    return sid


def run(
    repo: Repository,
    session_id: uuid.UUID,
    n_generations: int,
    *,
    pause: tuple[int, int, str] | None = None,
    delay: float = 0.0,
    out: TextIO = sys.stdout,
) -> None:
    def checkpoint(g: int, k: int, phase: str) -> None:
        if delay:
            time.sleep(delay)
        if pause == (g, k, phase):
            print("PAUSED", flush=True, file=out)
            while True:
                time.sleep(60)

    rp = repo.load_resume_point(session_id)
    opt = FakeOptimizer(rp.seed)
    if rp.last_completed is not None:
        opt.restore(rp.optimizer_state, rp.rng_state)
    resumed = rp.in_flight is not None
    g = rp.next_index
    while g < n_generations:
        if resumed:  # the in-flight generation was asked from this state: asking again gives the same batch
            opt.restore(rp.in_flight.optimizer_state_before, rp.in_flight.rng_state_before)
        state, rng_state = opt.state()
        codes = opt.ask()
        order = np.random.default_rng([rp.seed, g]).permutation(POPULATION + N_REFERENCE)  # display order
        images = [render(c) for c in codes] + [REFERENCE] * N_REFERENCE
        proposals = [
            Proposal(
                images[i],
                "candidate" if i < POPULATION else "reference",
                int(order[i]),
                code=codes[i] if i < POPULATION else None,
                code_index=i if i < POPULATION else None,
            )
            for i in range(POPULATION + N_REFERENCE)
        ]
        repo.begin_generation(session_id, g, proposals, state, rng_state=rng_state)
        checkpoint(g, 0, "begun")
        png_by_slot = {p.order_in_batch: images[i] for i, p in enumerate(proposals)}

        for p in repo.generation_data(session_id, g).presentations:
            k = p.order_in_batch
            if p.answered:
                if resumed:
                    dup = repo.record_responses(session_id, [ResponseRecord(p.id, p.counts, 50.0, 200.0)])
                    assert dup.duplicates == 1 and dup.inserted == 0, dup
                continue
            pid = p.id
            if p.shown and k % 2 == 1:
                pid = repo.reshow_presentations(session_id, [p.id])[p.id]
                show(repo, session_id, pid)
            elif not p.shown:
                show(repo, session_id, pid)
            checkpoint(g, k, "shown")
            repo.record_responses(session_id, [ResponseRecord(pid, neuron(png_by_slot[k]), 50.0, 200.0)])
            checkpoint(g, k, "answered")

        data = repo.generation_data(session_id, g)  # tell() sees committed responses only
        counts = data.counts_matrix("candidate")
        assert counts.min() >= 0, "a candidate is unanswered"
        fitness = counts[:, 0].astype(float)
        opt.tell(data.candidate_codes(), fitness)
        checkpoint(g, 0, "told")
        rank = np.argsort(np.argsort(-fitness, kind="stable"), kind="stable")
        by_index = {p.code_index: p for p in data.presentations if p.kind == "candidate"}
        scores = [
            ScoreRecord(
                by_index[i].id,
                {"pixel": float(np.linalg.norm(by_index[i].code))},
                int(rank[i] > 0),
                float(fitness[i]),
                bool(rank[i] == 0),
            )
            for i in range(POPULATION)
        ]
        repo.complete_generation(session_id, g, scores, *opt.state())
        print(f"completed {g}", flush=True, file=out)
        resumed = False
        g += 1
    repo.set_session_status(session_id, "completed")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("session_id", type=uuid.UUID)
    ap.add_argument("--generations", type=int, required=True)
    ap.add_argument("--pause", default=None, help="G:K:PHASE")
    ap.add_argument("--delay", type=float, default=0.0)
    args = ap.parse_args()
    pause = None
    if args.pause:
        g, k, phase = args.pause.split(":")
        pause = (int(g), int(k), phase)
    from server.db.database import connect
    from server.settings import Settings

    db = connect(Settings())
    print("STARTED", flush=True)
    run(db.repository(), args.session_id, args.generations, pause=pause, delay=args.delay)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
