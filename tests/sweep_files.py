"""The small probe every sweep test runs, written once: as a sweep's `[base]` and as the equivalent plain
`snslab insilico` config (built from the grid's meaning, not from our own expansion code)."""

from __future__ import annotations

PROBE_BASE = """
population = 12
generations = 5
retests = 2
stages = ["pixel"]
[generator]
name = "dct"
code_size = 64
image_size = 16
channels = 1
[reference]
source = "maximize"
generations = 4
"""


def sweep_base() -> str:
    """PROBE_BASE under `[base]`: its tables become `[base.<table>]` (the `[base]` header itself not included)."""
    return "\n".join(("[base." + ln[1:]) if ln.startswith("[") else ln for ln in PROBE_BASE.strip().splitlines())


def single_probe(mode: str, seed: int, output: str, subject: str) -> str:
    """One probe of the grid as a plain config: mode, seed and output first, then PROBE_BASE, then
    ``subject`` (the `[subject]` table's lines, header included)."""
    head, _, tables = PROBE_BASE.strip().partition("[generator]")
    return f'mode = "{mode}"\nseed = {seed}\n{head}\noutput = "{output}"\n[generator]{tables}\n{subject}\n'
