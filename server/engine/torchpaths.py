"""Fast torch paths shared by the DeePSiM generator, the ``cnn`` stage and the ``cnn-unit`` subject.

One rule keeps results trustworthy: on the CPU in fp32 nothing changes (same memory format, same batch
size, same operations as before), so stored sessions replay bit for bit. Everything that trades exactness
for speed is either CUDA-only (channels-last, pinned uploads, cuDNN autotuning, batches sized to the device)
or asked for by name (``precision``):

- ``fp32``: exact float32 everywhere (TF32 off even on CUDA);
- ``tf32``: on CUDA, float32 storage with TF32 tensor-core matmuls/convolutions; on the CPU the same as fp32;
- ``bf16``: bfloat16 autocast (CUDA, or CPUs with bf16 support); outputs come back as float32;
- ``auto`` (default): ``tf32`` on CUDA, ``fp32`` on the CPU.

How far the fast paths move stage distances from fp32, per layer, is measured by ``bench/torch_paths.py``
and recorded in docs/benchmarks.md (``AGREEMENT_TOLERANCE`` below is the documented bound).

torch is imported only inside functions, so numpy-only users of the engine never import it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np

from snslab_common.errors import ConfigError

PRECISIONS = ("auto", "fp32", "tf32", "bf16")
CUDA_BATCH = 256  # images per forward pass on a GPU: near the H200's throughput plateau (docs/benchmarks.md)

# Documented bound on the relative change of a stage distance ||f(x) - f(ref)|| against fp32
# (bench/torch_paths.py measures it per layer; the tests hold the CPU bf16 path to it).
AGREEMENT_TOLERANCE = {"fp32": 0.0, "tf32": 0.01, "bf16": 0.05}


def pick_precision(precision: str, device: str, field: str) -> str:
    """'auto' | 'fp32' | 'tf32' | 'bf16' -> the precision used on ``device`` (auto: tf32 on CUDA, else fp32)."""
    if precision not in PRECISIONS:
        raise ConfigError(field, f"unknown precision {precision!r}", list(PRECISIONS))
    if precision == "auto":
        return "tf32" if device == "cuda" else "fp32"
    if precision == "tf32" and device != "cuda":
        return "fp32"  # TF32 is a tensor-core format: on the CPU the same float32 maths
    if precision == "bf16" and device == "cpu":
        import torch

        if not torch.backends.mkldnn.is_available():
            raise ConfigError(field, "bf16 needs oneDNN on the CPU", ["auto", "fp32"])
    return precision


def pick_batch(batch_size: int | None, device: str, cpu_default: int, field: str) -> int:
    """The forward batch: as given, else ``cpu_default`` on the CPU (results unchanged) and CUDA_BATCH on a GPU."""
    from snslab_common.imaging import positive

    if batch_size is None:
        return CUDA_BATCH if device == "cuda" else cpu_default
    return positive(batch_size, field, integer=True)


def fast_layout(device: str, precision: str) -> bool:
    """Channels-last memory format: on CUDA always; on the CPU only with bf16 (fp32 CPU stays as before)."""
    return device == "cuda" or precision == "bf16"


def prepare_module(module, device: str, precision: str):
    """Move a module to its device (and channels-last where ``fast_layout``), eval mode, no gradients."""
    import torch

    module = module.to(device).eval().requires_grad_(False)
    if fast_layout(device, precision):
        module = module.to(memory_format=torch.channels_last)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # autotune once per input shape (warm-up outside timed paths)
    return module


@contextlib.contextmanager
def compute(device: str, precision: str) -> Iterator[None]:
    """inference_mode plus the numeric mode of ``precision`` (TF32 flags restored on exit)."""
    import torch

    with torch.inference_mode():
        if device != "cuda":
            if precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    yield
            else:
                yield
            return
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
        try:
            if precision == "bf16":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    yield
            else:
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def upload(array: np.ndarray, device: str, dtype=None):
    """A numpy array as a tensor on ``device``: through pinned memory, asynchronously, on CUDA."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(array))
    if dtype is not None and device != "cuda":
        t = t.to(dtype)
    if device == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
        if dtype is not None:
            t = t.to(dtype)
    return t


def to_layout(x, device: str, precision: str):
    """An NCHW tensor in the memory format the module was prepared for."""
    import torch

    return x.contiguous(memory_format=torch.channels_last) if fast_layout(device, precision) else x


def warm_up(fn: Callable[[], Any], device: str) -> None:
    """Run ``fn`` once (cuDNN autotuning, lazy CUDA init) and wait for the device, so no timed call pays it."""
    fn()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# -- several callers' batches in shared forward passes (probes run together: server/engine/lockstep.py) --
def exact_pass_min(device: str, precision: str, measured: int) -> int:
    """Rows per pass from which a row's result no longer depends on the pass's size or other rows.

    Measured on the CPU in fp32 (tests/test_sweep_batching.py): oneDNN computes a row alike in every pass of
    at least ``measured`` rows (2 for ResNet convolutions, 4 for DeePSiM's linear layers); smaller passes
    take other kernels and differ at float32 rounding. Elsewhere (CUDA, bf16) nothing is bitwise anyway: 1.
    """
    return measured if device == "cpu" and precision == "fp32" else 1


def pack_passes(sizes: list[int], batch: int, exact_min: int = 1) -> list[list[tuple[int, int, int]]]:
    """Forward passes for several callers' batches: each pass a list of (caller, start, stop) row ranges.

    A caller's own pass of fewer than ``exact_min`` rows (its last chunk of ``batch``) runs alone, as that
    caller alone would run it; every other row is packed with the other callers' into passes of at most
    ``batch`` rows, split evenly so that none is smaller than ``exact_min`` when the rows allow it.
    """
    alone: list[list[tuple[int, int, int]]] = []
    shared: list[tuple[int, int]] = []  # (caller, row)
    for i, n in enumerate(sizes):
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            if stop - start < exact_min:
                alone.append([(i, start, stop)])
            else:
                shared += [(i, r) for r in range(start, stop)]
    passes = []
    n_pass = -(-len(shared) // batch)
    bounds = [round(k * len(shared) / n_pass) for k in range(n_pass + 1)] if n_pass else [0]
    for a, b in zip(bounds[:-1], bounds[1:]):
        ranges: list[tuple[int, int, int]] = []
        for i, r in shared[a:b]:  # consecutive rows of one caller become one range
            if ranges and ranges[-1][0] == i and ranges[-1][2] == r:
                ranges[-1] = (i, ranges[-1][1], r + 1)
            else:
                ranges.append((i, r, r + 1))
        passes.append(ranges)
    return passes + alone


def run_passes(one_pass: Callable[[np.ndarray], np.ndarray], inputs: list[np.ndarray], batch: int,
               exact_min: int = 1) -> list[np.ndarray]:
    """``one_pass`` (rows -> outputs, one forward pass) over several callers' inputs packed by
    ``pack_passes``; returns each caller's outputs in its own row order."""
    out: list[np.ndarray | None] = [None] * len(inputs)
    for ranges in pack_passes([len(x) for x in inputs], batch, exact_min):
        # a caller's own pass gets its rows as its own call would (a slice: the same strides, the same kernels)
        x = inputs[ranges[0][0]][ranges[0][1]:ranges[0][2]] if len(ranges) == 1 else \
            np.concatenate([inputs[i][a:b] for i, a, b in ranges])
        y = one_pass(x)
        k = 0
        for i, a, b in ranges:
            if out[i] is None:
                out[i] = np.empty((len(inputs[i]), *y.shape[1:]), dtype=y.dtype)
            out[i][a:b] = y[k : k + b - a]
            k += b - a
    return [o if o is not None else np.empty((0,)) for o in out]
