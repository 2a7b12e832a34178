"""Images per second through the torch paths (DeePSiM generator, `cnn` stage, `cnn-unit`), CPU and GPU, with
the fast paths' distance agreement against fp32, in one run.

Networks have seeded random weights of the right shapes (nothing is downloaded): DeePSiM fc7 (upconv
layout), torchvision ResNet50. Each timed figure is the median of --repeats calls after one warm-up call
outside the timed path. Rows: every device present (the CPU always; CUDA when torch sees a GPU, otherwise
the run says plainly that none was present) x precision (fp32, and the fast one: bf16 on the CPU; tf32 and
bf16 on CUDA). Agreement: for --agreement-images images and a reference, the stage distance
||f(x) - f(ref)|| per layer in the fast precision vs fp32: the largest relative difference and the rank
correlation (server/engine/torchpaths.py documents the tolerance).

    nice .venv/bin/python bench/torch_paths.py                          # defaults (CPU: ~2 min on 2 cores)
    .venv/bin/python bench/torch_paths.py --cpu-images 40 --gpu-batch 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--architecture", default="resnet50", help="torchvision model of the stage and unit (resnet50)")
    p.add_argument("--stage-layer", default="layer3", help="layer of the cnn stage (layer3)")
    p.add_argument("--unit-layer", default="layer4", help="layer of the cnn-unit (layer4)")
    p.add_argument("--agreement-layers", nargs="+", default=["layer1", "layer2", "layer3", "layer4"],
                   help="layers whose fast-vs-fp32 distance agreement is measured")
    p.add_argument("--generation", type=int, default=40, help="images per generation on the GPU (40)")
    p.add_argument("--cpu-images", type=int, default=8, help="images per timed call on the CPU (8: 2-core machines)")
    p.add_argument("--gpu-batch", type=int, default=256, help="the large GPU batch for the stage row (256)")
    p.add_argument("--agreement-images", type=int, default=8, help="images in the agreement measure (8)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per figure, median reported (3)")
    p.add_argument("--no-deepsim", action="store_true", help="skip the generator (writes a 100 MB weights file)")
    return p.parse_args(argv)


def deepsim_weights(folder: Path) -> Path:
    import torch

    from server.engine.generators import deepsim_state_dict_shapes

    g = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape in deepsim_state_dict_shapes("upconv").items():
        fan_in = shape[1] if len(shape) == 2 else (shape[0] * shape[2] * shape[3] / 4 if len(shape) == 4 else 1)
        sd[key] = (torch.randn(shape, generator=g) * (0.1 if len(shape) == 1 else fan_in ** -0.5)).half()
    path = folder / "deepsim_fc7_random.pt"
    torch.save(sd, path)
    return path


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` after one untimed warm-up call (results are numpy: the device is synced)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def plain_eager_stage(arch: str, layer: str, device: str):
    """The cnn stage as it was before the fast paths (plain eager fp32, NCHW, batches of 64): the baseline."""
    import torch
    import torch.nn.functional as F
    import torchvision

    from server.engine.stages import IMAGENET_MEAN, IMAGENET_STD

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.get_model(arch, weights=None).to(device).eval().requires_grad_(False)
    target = dict(model.named_modules())[layer]
    mean = torch.tensor(IMAGENET_MEAN, device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).reshape(1, 3, 1, 1)

    class Stop(Exception):
        pass

    def run(images):
        out = []

        def hook(_m, _i, o):
            out.append(o.float().cpu().numpy())
            raise Stop

        handle = target.register_forward_hook(hook)
        try:
            with torch.inference_mode():
                for i in range(0, len(images), 64):
                    x = torch.as_tensor(images[i:i + 64], dtype=torch.float32, device=device).permute(0, 3, 1, 2)
                    x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
                    try:
                        model((x - mean) / std)
                    except Stop:
                        pass
        finally:
            handle.remove()
        return np.concatenate(out)

    return run


def agreement(args, device: str, precision: str, images: np.ndarray) -> list[tuple[str, float, float]]:
    from scipy.stats import spearmanr

    from server.engine.stages import make_stage

    rows = []
    for layer in args.agreement_layers:
        d = {}
        for prec in ("fp32", precision):
            st = make_stage("cnn", architecture=args.architecture, layer=layer, device=device, precision=prec, seed=0)
            f = st.features(images)
            d[prec] = np.linalg.norm(f[1:].astype(np.float64) - f[:1], axis=1)
        rel = np.abs(d[precision] - d["fp32"]) / d["fp32"]
        rows.append((layer, float(rel.max()), float(spearmanr(d["fp32"], d[precision]).statistic)))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from server.engine.generators import make_generator
    from server.engine.stages import make_stage
    from server.engine.subjects import make_subject
    from server.engine.torchpaths import AGREEMENT_TOLERANCE

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}; CPU threads {torch.get_num_threads()}")
    if "cuda" in devices:
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    else:
        print("GPU: none present (torch.cuda.is_available() is False): CPU rows only")
    rng = np.random.default_rng(0)
    tmp = tempfile.TemporaryDirectory()
    weights = None if args.no_deepsim else deepsim_weights(Path(tmp.name))

    print(f"\nimages/s (median of {args.repeats} after a warm-up); generation = generator + stage + unit")
    print(f"{'device':<6} {'precision':<9} {'batch':>5} {'generator':>10} {'stage ' + args.stage_layer:>13} "
          f"{'unit ' + args.unit_layer:>12} {'generation':>11} {'ms/generation':>14}")
    agree_rows = []
    ratios = []
    for device in devices:
        n = args.cpu_images if device == "cpu" else args.generation
        precisions = ["fp32", "bf16"] if device == "cpu" else ["fp32", "tf32", "bf16"]
        if device == "cpu" and not torch.backends.mkldnn.is_available():
            precisions = ["fp32"]
        codes = rng.normal(size=(n, 4096))
        images = rng.random((n, 224, 224, 3), dtype=np.float32)
        plain = plain_eager_stage(args.architecture, args.stage_layer, device)
        t_plain = timed(lambda: plain(images), args.repeats)
        print(f"{device:<6} {'eager':<9} {n:>5} {'':>10} {n / t_plain:>13.1f}   (the stage before: plain eager fp32)")
        for prec in precisions:
            gen = None if weights is None else make_generator("deepsim-fc7", weights=str(weights), device=device,
                                                              precision=prec)
            stage = make_stage("cnn", architecture=args.architecture, layer=args.stage_layer, device=device,
                               precision=prec, seed=0)
            unit = make_subject("cnn-unit", architecture=args.architecture, layer=args.unit_layer, unit=[0],
                                device=device, precision=prec, seed=1)
            t_gen = timed(lambda: gen.render(codes), args.repeats) if gen else float("nan")
            t_stage = timed(lambda: stage.features(images), args.repeats)
            ratios.append((device, prec, t_plain / t_stage))
            t_unit = timed(lambda: unit.rate(images), args.repeats)

            def generation():
                x = gen.render(codes) if gen else images
                stage.features(x)
                unit.rate(x)

            t_all = timed(generation, args.repeats)
            print(f"{device:<6} {prec:<9} {n:>5} {n / t_gen:>10.1f} {n / t_stage:>13.1f} {n / t_unit:>12.1f} "
                  f"{n / t_all:>11.1f} {1000 * t_all * (args.generation / n):>14.1f}")
            if device == "cuda" and args.gpu_batch:
                big = rng.random((args.gpu_batch, 224, 224, 3), dtype=np.float32)
                t_big = timed(lambda: stage.features(big), args.repeats)
                print(f"{device:<6} {prec:<9} {args.gpu_batch:>5} {'':>10} {args.gpu_batch / t_big:>13.1f}   (stage only)")
            del gen, stage, unit
        for prec in precisions[1:]:
            imgs = rng.random((args.agreement_images + 1, 224, 224, 3), dtype=np.float32)
            agree_rows += [(device, prec, *row) for row in agreement(args, device, prec, imgs)]
    print("\nstage speed vs the plain eager path, same run: " + ", ".join(
        f"{d} {p} x{r:.2f}" for d, p, r in ratios))
    if weights is None:
        print("(generator skipped: --no-deepsim; generation = stage + unit)")
    print(f"\nstage distance agreement with fp32 ({args.agreement_images} images vs a reference; tolerance "
          + ", ".join(f"{k} {v:.0%}" for k, v in AGREEMENT_TOLERANCE.items() if v) + ")")
    print(f"{'device':<6} {'precision':<9} {'layer':<8} {'max rel diff':>12} {'spearman':>9}  within")
    for device, prec, layer, rel, rho in agree_rows:
        ok = "yes" if rel <= AGREEMENT_TOLERANCE[prec] else "NO"
        print(f"{device:<6} {prec:<9} {layer:<8} {rel:>12.2e} {rho:>9.4f}  {ok}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
