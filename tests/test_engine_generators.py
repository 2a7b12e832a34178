"""Generators: DCT maths (orthonormality, order, round trips, ball), pixel generator, DeePSiM loading."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.fft import idctn

from server.engine.base import ConfigError
from server.engine.generators import (
    GENERATORS,
    DCTGenerator,
    PixelGenerator,
    deepsim_state_dict_shapes,
    make_generator,
)

REPO = Path(__file__).resolve().parents[1]


def basis_matrix(gen: DCTGenerator) -> np.ndarray:
    """W as an explicit (pixels, n) matrix, in the generator's own channel space."""
    eye = np.eye(gen.code_size)
    cols = (gen.unclipped(eye) - 0.5) / gen.scale  # (n, H, W, 3)
    if gen.channels == 1:
        cols = cols[..., :1]
    return cols.reshape(gen.code_size, -1).T


@pytest.mark.parametrize("channels", [1, 3])
def test_dct_basis_is_orthonormal(channels):
    gen = DCTGenerator(code_size=60, image_size=(8, 10), channels=channels, scale=0.3)
    w = basis_matrix(gen)
    assert w.shape == (8 * 10 * channels, 60)
    np.testing.assert_allclose(w.T @ w, np.eye(60), atol=1e-12)


def test_full_dct_basis_is_an_orthogonal_matrix():
    gen = DCTGenerator(code_size=6 * 6 * 3, image_size=6, channels=3)
    w = basis_matrix(gen)
    np.testing.assert_allclose(w @ w.T, np.eye(108), atol=1e-12)
    with pytest.raises(ConfigError) as err:
        DCTGenerator(code_size=6 * 6 * 3 + 1, image_size=6, channels=3)
    assert err.value.field == "generator.code_size" and "1..108" in str(err.value)


def test_dct_matches_scipy_idct_in_code_order():
    gen = DCTGenerator(code_size=500, image_size=16, channels=3, scale=0.25)
    rng = np.random.default_rng(1)
    z = rng.normal(size=(2, 500))
    grid = np.zeros((2, 16, 16, 3))
    for k, (u, v, c) in enumerate(gen.basis_index):
        grid[:, u, v, c] = z[:, k]
    expected = 0.5 + 0.25 * idctn(grid, axes=(1, 2), norm="ortho")
    np.testing.assert_allclose(gen.unclipped(z), expected, atol=1e-12)
    np.testing.assert_allclose(gen.render(z), np.clip(expected, 0, 1), atol=2e-7)


def test_code_order_puts_dc_terms_first():
    gen = DCTGenerator(code_size=30, image_size=8, channels=3)
    idx = gen.basis_index
    assert idx[:3].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2]]
    assert idx[3:9].tolist() == [[0, 1, 0], [0, 1, 1], [0, 1, 2], [1, 0, 0], [1, 0, 1], [1, 0, 2]]
    assert np.all(np.diff(idx[:, 0] + idx[:, 1]) >= 0)
    # the first code is the red DC term: a uniform change of the red channel only
    img = gen.unclipped(np.r_[1.0, np.zeros(29)][None])[0]
    np.testing.assert_allclose(img[..., 0], 0.5 + 0.25 / 8)
    np.testing.assert_allclose(img[..., 1:], 0.5)
    grey = DCTGenerator(code_size=10, image_size=8, channels=1)
    assert grey.basis_index[0].tolist() == [0, 0, 0]
    img = grey.render(np.r_[2.0, np.zeros(9)][None])[0]
    np.testing.assert_allclose(img, 0.5 + 0.25 * 2 / 8, atol=1e-7)  # grey replicated to RGB


@pytest.mark.parametrize("channels", [1, 3])
def test_encode_render_round_trip(channels):
    gen = DCTGenerator(code_size=4096, image_size=64, channels=channels)
    rng = np.random.default_rng(2)
    z = rng.normal(scale=0.05, size=(3, 4096))
    x = gen.render(z)
    assert x.shape == (3, 64, 64, 3) and x.dtype == np.float32
    assert 0.0 < x.min() and x.max() < 1.0  # nothing clips, so the round trip is exact
    np.testing.assert_allclose(gen.encode(gen.unclipped(z)), z, atol=1e-12)
    np.testing.assert_allclose(gen.encode(x), z, atol=1e-5)  # float32 image rounding only
    np.testing.assert_allclose(gen.render(gen.encode(x)), x, atol=1e-6)
    # encode is a projection: the residual of any image is orthogonal to the kept basis
    img = rng.random((2, 64, 64, 3))
    resid = img - gen.unclipped(gen.encode(img))
    np.testing.assert_allclose(gen.encode(resid + 0.5), 0.0, atol=1e-10)


def test_pixel_distance_equals_scaled_code_distance_when_unclipped():
    gen = DCTGenerator(code_size=300, image_size=16, channels=3, scale=0.2)
    rng = np.random.default_rng(3)
    a, b = rng.normal(scale=0.1, size=(2, 300))
    d = np.linalg.norm(gen.unclipped(a[None]) - gen.unclipped(b[None]))
    assert d == pytest.approx(0.2 * np.linalg.norm(a - b), rel=1e-12)


def test_ball_projection():
    gen = DCTGenerator(code_size=50, image_size=8, ball_radius=2.0)
    rng = np.random.default_rng(4)
    z = rng.normal(size=(4, 50))
    z[0] *= 0.1 / np.linalg.norm(z[0])  # inside: unchanged
    out = gen.project(z)
    np.testing.assert_array_equal(out[0], z[0])
    np.testing.assert_allclose(np.linalg.norm(out[1:], axis=1), 2.0, rtol=1e-12)
    cos = np.sum(out[1:] * z[1:], axis=1) / (np.linalg.norm(out[1:], axis=1) * np.linalg.norm(z[1:], axis=1))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-12)
    free = DCTGenerator(code_size=50, image_size=8)
    np.testing.assert_array_equal(free.project(z), z)


def test_pixel_generator_round_trip_and_clip():
    gen = PixelGenerator(image_size=4)
    assert gen.code_size == 48 and gen.image_shape == (4, 4, 3)
    rng = np.random.default_rng(5)
    img = rng.random((2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(gen.render(gen.encode(img)), img)
    out = gen.render(np.linspace(-1, 2, 48)[None])
    assert out.min() == 0.0 and out.max() == 1.0
    with pytest.raises(ConfigError) as err:
        gen.render(np.zeros((1, 47)))
    assert err.value.field == "code"


def test_make_generator_errors_name_field_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        make_generator("biggan")
    assert err.value.field == "generator"
    assert "dct, deepsim-fc6, deepsim-fc7, pixel" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_generator("dct", code_sise=10)
    assert err.value.field == "generator.code_sise"
    assert "ball_radius, channels, code_size, image_size, scale" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_generator("deepsim-fc7")
    assert err.value.field == "generator.weights" and "required" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_generator("dct", channels=2)
    assert err.value.field == "generator.channels" and "1, 3" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_generator("dct", image_size=-3)
    assert err.value.field == "generator.image_size"
    gen = make_generator("dct", code_size=12, image_size=4, channels=1, ball_radius=3)
    assert isinstance(gen, DCTGenerator) and gen.code_size == 12 and gen.ball_radius == 3.0
    assert set(GENERATORS) == {"dct", "deepsim-fc6", "deepsim-fc7", "pixel"}


def test_numpy_only_use_never_imports_torch():
    code = (
        "import sys\n"
        "import server.engine.generators, server.engine.stages, server.engine.subjects\n"
        "import server.engine.affine, snslab_common.gabor, server.engine.imaging\n"
        "from server.engine.generators import make_generator\n"
        "from server.engine.stages import make_stage\n"
        "from server.engine.subjects import make_subject\n"
        "import numpy as np\n"
        "g = make_generator('dct', code_size=64, image_size=16)\n"
        "x = g.render(np.zeros((1, 64)))\n"
        "make_stage('gabor-energy', size=16).features(x)\n"
        "make_subject('complex-cell', image_size=16).rate(x)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------- DeePSiM
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def deepsim_weights(tmp_path_factory):
    """Random DeePSiM weights in the upconvGAN layout, saved as float16 (half the file size)."""
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape in deepsim_state_dict_shapes("upconv").items():
        if key.endswith("bias"):
            sd[key] = (torch.randn(shape, generator=gen) * 0.1).half()
        else:
            fan_in = shape[1] if len(shape) == 2 else shape[0] * shape[2] * shape[3] / 4
            sd[key] = (torch.randn(shape, generator=gen) * (1.0 / fan_in) ** 0.5).half()
    sd["deconv0.bias"] = torch.tensor([60.0, 0.0, -60.0]).half()  # BGR: blue up, red down
    path = tmp_path_factory.mktemp("deepsim") / "upconvGAN_fc7.pt"
    torch.save(sd, path)
    return path, {k: v.float() for k, v in sd.items()}


def reference_deepsim(sd: dict, z: np.ndarray) -> np.ndarray:
    """The DeePSiM forward pass written out with functional ops, independently of the module."""
    import torch.nn.functional as F

    x = torch.as_tensor(z, dtype=torch.float32)
    for name in ("defc7", "defc6", "defc5"):
        x = F.leaky_relu(F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"]), 0.3)
    x = x.reshape(-1, 256, 4, 4)
    convs = [("deconv5", 2), ("conv5_1", 1), ("deconv4", 2), ("conv4_1", 1), ("deconv3", 2), ("conv3_1", 1),
             ("deconv2", 2), ("deconv1", 2), ("deconv0", 2)]
    for i, (name, stride) in enumerate(convs):
        x = F.conv_transpose2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], stride=stride, padding=1)
        if i < len(convs) - 1:
            x = F.leaky_relu(x, 0.3)
    bgr = (x + torch.tensor([104.0, 117.0, 123.0]).reshape(1, 3, 1, 1)) / 255.0
    rgb = bgr.clamp(0, 1)[:, [2, 1, 0]]
    return rgb.permute(0, 2, 3, 1).numpy()


def test_deepsim_renders_like_the_reference_forward_pass(deepsim_weights):
    path, sd = deepsim_weights
    gen = make_generator("deepsim-fc7", weights=str(path))
    assert gen.code_size == 4096 and gen.image_shape == (256, 256, 3) and gen.layout == "upconv"
    z = np.random.default_rng(6).normal(size=(2, 4096))
    img = gen.render(z)
    assert img.shape == (2, 256, 256, 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.01
    np.testing.assert_array_equal(gen.render(z), img)  # deterministic
    np.testing.assert_allclose(img[:1], reference_deepsim(sd, z[:1]), atol=1e-5)
    # the BGR -> RGB flip: the bias pushed channel 0 (blue) up, so RGB blue > red on average
    assert img[..., 2].mean() > img[..., 0].mean() + 0.2
    small = make_generator("deepsim-fc6", weights=str(path), image_size=64)
    out = small.render(z[:1])
    assert out.shape == (1, 64, 64, 3) and small.name == "deepsim-fc6"
    assert abs(out.mean() - img[:1].mean()) < 0.01


def test_deepsim_weight_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ConfigError) as err:
        make_generator("deepsim-fc7", weights=str(missing))
    assert err.value.field == "generator.weights"
    assert str(err.value) == f"generator.weights: file not found: {missing}"
    bad = tmp_path / "bad.pt"
    torch.save({"defc7.weight": torch.zeros(4096, 10)}, bad)
    with pytest.raises(ConfigError) as err:
        make_generator("deepsim-fc7", weights=str(bad))
    assert err.value.field == "generator.weights"
    assert "'defc7.weight'" in str(err.value) and "(4096, 4096)" in str(err.value) and "(4096, 10)" in str(err.value)
    other = tmp_path / "other.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, other)
    with pytest.raises(ConfigError) as err:
        make_generator("deepsim-fc7", weights=str(other))
    assert "'conv1.weight'" in str(err.value)


def test_deepsim_key_layouts_are_recognised():
    from server.engine.generators import _normalise_deepsim_keys
    from server.engine.imaging import check_state_dict

    def meta(layout, prefix="", quirk=False):
        sd = {}
        for k, s in deepsim_state_dict_shapes(layout).items():
            if quirk:
                k = k.replace(".weight", ".1.weight")
            sd[prefix + k] = torch.empty(s, device="meta")
        return sd

    for layout, prefix, quirk in [("upconv", "", False), ("upconv", "G.", False), ("upconv", "", True),
                                  ("pxdream", "_network.", False)]:
        found, sd = _normalise_deepsim_keys(meta(layout, prefix, quirk), "generator.weights")
        assert found == layout
        check_state_dict(deepsim_state_dict_shapes(layout), sd, "generator.weights")
    assert "tconv0.bias" not in deepsim_state_dict_shapes("pxdream")
    partial = meta("upconv")
    del partial["conv4_1.weight"]
    with pytest.raises(ConfigError) as err:
        check_state_dict(deepsim_state_dict_shapes("upconv"), partial, "generator.weights")
    assert "missing key 'conv4_1.weight'" in str(err.value) and "(256, 256, 3, 3)" in str(err.value)


@pytest.mark.parametrize("module", ["server.engine.generators", "server.engine.stages", "snslab_common.neurons",
                                    "server.engine.affine"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
