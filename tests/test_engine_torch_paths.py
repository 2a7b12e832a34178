"""The fast torch paths: CPU fp32 results bit for bit as the plain eager path gave them before, `auto`
device and precision choices, and the bf16 path's stage distances within the documented tolerance."""

from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from server.engine.base import ConfigError  # noqa: E402
from server.engine.generators import _build_deepsim, _normalise_deepsim_keys, deepsim_state_dict_shapes, make_generator  # noqa: E402
from server.engine.stages import IMAGENET_MEAN, IMAGENET_STD, make_stage  # noqa: E402
from server.engine.subjects import make_subject  # noqa: E402
from server.engine.torchpaths import AGREEMENT_TOLERANCE  # noqa: E402

CUDA = torch.cuda.is_available()


def old_cnn_features(arch: str, layer: str, seed: int, size: int, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The cnn stage as it was before the fast paths (kept verbatim here as the reference)."""
    import torch.nn.functional as F

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(arch, weights=None)
    model = model.to("cpu").eval().requires_grad_(False)
    target = dict(model.named_modules())[layer]
    mean = torch.tensor(np.asarray(IMAGENET_MEAN, np.float32)).reshape(1, 3, 1, 1)
    std = torch.tensor(np.asarray(IMAGENET_STD, np.float32)).reshape(1, 3, 1, 1)
    out = []

    class Stop(Exception):
        pass

    def hook(_m, _i, o):
        out.append(o.detach().float().cpu().numpy())
        raise Stop

    handle = target.register_forward_hook(hook)
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = torch.as_tensor(np.ascontiguousarray(images[start:start + batch]), dtype=torch.float32).permute(0, 3, 1, 2)
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            x = (x - mean) / std
            try:
                model(x)
            except Stop:
                pass
    handle.remove()
    a = np.concatenate(out)
    return a.reshape(len(a), -1)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).random((5, 48, 48, 3)).astype(np.float32)


def test_cpu_fp32_cnn_stage_and_unit_are_bit_identical_to_the_plain_path(images):
    stage = make_stage("cnn", architecture="resnet18", layer="layer2", input_size=64, device="cpu", seed=4)
    assert stage.precision == "fp32" and stage.batch_size == 64
    expected = old_cnn_features("resnet18", "layer2", 4, 64, images)
    assert np.array_equal(stage.features(images), expected)
    # the default device: CUDA when present, else the CPU (and then the same bits)
    auto = make_stage("cnn", architecture="resnet18", layer="layer2", input_size=64, seed=4)
    assert auto.device == ("cuda" if CUDA else "cpu")
    if not CUDA:
        assert np.array_equal(auto.features(images), expected)
    unit = make_subject("cnn-unit", architecture="resnet18", layer="layer2", unit=[3], input_size=64, seed=4,
                        device="cpu")
    c, h, w = unit.stage.feature_shape
    idx = np.ravel_multi_index((3, h // 2, w // 2), (c, h, w))
    assert np.array_equal(unit.rate(images)[:, 0], np.maximum(expected[:, idx], 0.0).astype(np.float64))


def test_cpu_fp32_deepsim_is_bit_identical_to_the_plain_path(tmp_path):
    gen_t = torch.Generator().manual_seed(1)
    sd = OrderedDict()
    for key, shape in deepsim_state_dict_shapes("upconv").items():
        fan_in = shape[1] if len(shape) == 2 else (shape[0] * shape[2] * shape[3] / 4 if len(shape) == 4 else 1)
        sd[key] = (torch.randn(shape, generator=gen_t) * (0.1 if len(shape) == 1 else fan_in ** -0.5)).half()
    path = tmp_path / "fc7.pt"
    torch.save(sd, path)
    gen = make_generator("deepsim-fc7", weights=str(path), image_size=64)
    assert gen.device == ("cuda" if CUDA else "cpu")  # auto by default
    cpu = make_generator("deepsim-fc7", weights=str(path), image_size=64, device="cpu")
    assert cpu.precision == "fp32" and cpu.batch_size == 32
    z = np.random.default_rng(2).normal(size=(3, 4096))

    # the old render: meta-built net, assigned float32 weights, eager forward, clamp, BGR->RGB, resize
    import torch.nn.functional as F

    _, fixed = _normalise_deepsim_keys(torch.load(path, weights_only=True), "w")
    with torch.device("meta"):
        net = _build_deepsim("upconv")
    net.load_state_dict({k: v.to(torch.float32) for k, v in fixed.items()}, assign=True)
    net = net.eval().requires_grad_(False)
    with torch.inference_mode():
        y = net(torch.as_tensor(z, dtype=torch.float32))
        x = torch.clamp((y + torch.tensor([104.0, 117.0, 123.0]).reshape(1, 3, 1, 1)) / 255.0, 0.0, 1.0)[:, [2, 1, 0]]
        x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True).clamp(0.0, 1.0)
    expected = x.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(cpu.render(z), expected)
    if not CUDA:
        assert np.array_equal(gen.render(z), expected)


def test_bf16_stage_distances_agree_with_fp32_within_the_documented_tolerance(images):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN: bf16 autocast on the CPU is not offered")
    exact = make_stage("cnn", architecture="resnet18", layer="layer3", input_size=64, device="cpu", seed=2)
    fast = make_stage("cnn", architecture="resnet18", layer="layer3", input_size=64, device="cpu", seed=2,
                      precision="bf16")
    assert fast.precision == "bf16"
    ref = images[:1]
    d_exact = np.linalg.norm(exact.features(images[1:]) - exact.features(ref), axis=1)
    d_fast = np.linalg.norm(fast.features(images[1:]) - fast.features(ref), axis=1)
    rel = np.abs(d_fast - d_exact) / d_exact
    assert rel.max() <= AGREEMENT_TOLERANCE["bf16"], rel
    assert rel.max() > 0  # it really ran in bf16 (exact agreement would mean fp32 ran)


def test_precision_and_device_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"^stage.precision: unknown precision 'fp8' \(allowed: auto, bf16, fp32, tf32\)"):
        make_stage("cnn", architecture="resnet18", layer="layer1", precision="fp8")
    with pytest.raises(ConfigError, match=r"^subject.precision"):
        make_subject("cnn-unit", architecture="resnet18", layer="layer1", precision="half")
    with pytest.raises(ConfigError, match=r"^stage.batch_size"):
        make_stage("cnn", architecture="resnet18", layer="layer1", batch_size=0)
    if not CUDA:
        with pytest.raises(ConfigError, match=r"^stage.device: CUDA requested but no CUDA device"):
            make_stage("cnn", architecture="resnet18", layer="layer1", device="cuda")
