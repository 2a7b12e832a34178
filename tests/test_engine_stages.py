"""Stages: pixel resizing like torch, Gabor-energy maths and phase invariance, CNN hooks and errors."""

from __future__ import annotations

import numpy as np
import pytest

from server.engine.base import ConfigError
from snslab_common.gabor import gabor_pair, grating, to_rgb
from server.engine.imaging import resize
from server.engine.stages import STAGES, GaborEnergyStage, PixelStage, make_stage


def test_pixel_stage_flattens_and_resizes_like_torch_bilinear():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    img = rng.random((2, 40, 30, 3)).astype(np.float32)
    np.testing.assert_array_equal(PixelStage().features(img), img.reshape(2, -1))
    feats = make_stage("pixel", size=56).features(img)
    assert feats.shape == (2, 56 * 56 * 3) and feats.dtype == np.float32
    ref = F.interpolate(torch.from_numpy(img).permute(0, 3, 1, 2), size=(56, 56), mode="bilinear",
                        align_corners=False)
    np.testing.assert_allclose(feats.reshape(2, 56, 56, 3), ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)


@pytest.mark.parametrize("size", [(17, 23), (64, 64), (9, 100)])
def test_resize_matches_torch_with_and_without_antialias(size):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    img = np.random.default_rng(1).random((1, 48, 40, 3))
    t = torch.from_numpy(img).permute(0, 3, 1, 2)
    for aa in (False, True):
        ref = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=aa)
        np.testing.assert_allclose(resize(img, size, antialias=aa), ref.permute(0, 2, 3, 1).numpy(), atol=1e-10)


def test_gabor_pair_is_unit_norm_zero_mean_and_orthogonal():
    g0, g90 = gabor_pair(32, (15.0, 17.0), 30.0, 6.0)
    assert np.linalg.norm(g0) == pytest.approx(1.0) and np.linalg.norm(g90) == pytest.approx(1.0)
    assert abs(g0.sum()) < 1e-12 and abs(g90.sum()) < 1e-12
    assert abs(np.vdot(g0, g90)) < 1e-12
    # orientation 0 means vertical stripes: the even filter is constant along columns near its centre
    v0, _ = gabor_pair(33, None, 0.0, 8.0)
    assert np.argmax(v0) % 33 == 16 and np.allclose(v0[10:23, 16], v0[10:23, 16][::-1])
    assert v0[16, 16] > 0 and v0[16, 20] < 0  # half a period to the right: opposite sign


def test_gabor_energy_matches_direct_dot_products():
    st = GaborEnergyStage(orientations=4, wavelengths=(4, 8), stride=5, size=40)
    img = np.random.default_rng(2).random((2, 40, 40, 3)).astype(np.float32)
    r = st.responses(img)
    assert r.shape == (2, 8, 8, 8) and st.n_features == 8 * 64
    k = 2 * int(np.ceil(3 * 0.5 * 8)) + 1
    h = k // 2
    dx = np.pad(img.mean(axis=-1) - 0.5, ((0, 0), (h, h), (h, h)))
    for f, (theta, wl) in enumerate([(t, w) for t in (0.0, 45.0, 90.0, 135.0) for w in (4.0, 8.0)]):
        g0, g90 = gabor_pair(k, None, theta, wl, 0.5 * wl)
        for a, b in [(0, 0), (3, 6), (7, 7)]:
            p, q = st.positions[a], st.positions[b]
            patch = dx[:, p : p + k, q : q + k]
            expect = (patch * g0).sum(axis=(1, 2)) + 1j * (patch * g90).sum(axis=(1, 2))
            np.testing.assert_allclose(r[:, f, a, b], expect, atol=2e-6)
    feats = st.features(img)
    np.testing.assert_allclose(feats, np.abs(r).reshape(2, -1), rtol=1e-6)


def test_gabor_energy_is_phase_invariant_where_linear_filters_are_not():
    st = make_stage("gabor-energy")  # 8 orientations x (4, 8, 16) px, stride 4, 64 px
    phases = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    imgs = to_rgb(np.stack([grating(64, 0.0, 8.0, ph, 0.5) for ph in phases]))
    r = st.responses(imgs)
    f = 1  # orientation 0, wavelength 8: the matched filter
    inner = slice(4, 12)  # positions well inside the image
    energy = np.abs(r[:, f, inner, inner])
    even = r[:, f, inner, inner].real
    assert energy.std(axis=0).max() / energy.mean() < 0.01
    assert even.std(axis=0).min() / energy.mean() > 0.5
    # orientation selectivity: the orthogonal filter barely responds
    ortho = np.abs(r[:, 4 * 3 + 1, inner, inner])
    assert ortho.mean() < 0.05 * energy.mean()


def test_stage_config_errors_name_field_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        make_stage("hmax")
    assert err.value.field == "stage" and "cnn, gabor-energy, pixel" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_stage("gabor-energy", orientation=4)
    assert err.value.field == "stage.orientation"
    assert "orientations, sigma_ratio, size, stride, wavelengths" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_stage("gabor-energy", wavelengths=[1.0, 4.0])
    assert err.value.field == "stage.wavelengths"
    with pytest.raises(ConfigError) as err:
        make_stage("pixel", size=0)
    assert err.value.field == "stage.size"
    assert set(STAGES) == {"pixel", "gabor-energy", "cnn"}


# --------------------------------------------------------------------------------------------------- CNN
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory):
    torch.manual_seed(123)
    model = torchvision.models.resnet18(weights=None)
    # non-trivial batch-norm statistics so a wrong eval/train mode would show
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("cnn") / "resnet18.pt"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def test_cnn_stage_hook_equals_manual_forward_and_stops_early(resnet_weights):
    path, model = resnet_weights
    st = make_stage("cnn", architecture="resnet18", layer="layer2.0.conv1", weights=str(path), input_size=64,
                    device="cpu")
    imgs = np.random.default_rng(3).random((3, 48, 48, 3)).astype(np.float32)
    calls = []
    handle = st.model.layer3.register_forward_hook(lambda *a: calls.append(1))
    feats = st.features(imgs)
    handle.remove()
    assert calls == []  # the forward pass stopped after layer2.0.conv1
    assert feats.shape == (3, 128 * 8 * 8) and feats.dtype == np.float32 and st.feature_shape == (128, 8, 8)

    x = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).reshape(1, 3, 1, 1)
    with torch.no_grad():
        m = model
        y = m.layer2[0].conv1(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))
    np.testing.assert_allclose(feats, y.reshape(3, -1).numpy(), rtol=1e-4, atol=1e-5)
    # batching does not change the answer
    st.batch_size = 2
    np.testing.assert_allclose(st.features(imgs), feats, rtol=1e-4, atol=1e-5)


def test_cnn_weights_without_batchnorm_counters_load(resnet_weights, tmp_path):
    path, model = resnet_weights
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    slim = tmp_path / "slim.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, slim)  # a DataParallel checkpoint
    st = make_stage("cnn", architecture="resnet18", layer="bn1", weights=str(slim), input_size=32, device="cpu")
    assert torch.equal(st.model.bn1.running_var, model.bn1.running_var)


def test_cnn_stage_with_a_user_module():
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 5))
    st = make_stage("cnn", module=net, layer="1", input_size=16, normalize=None, device="cpu")
    imgs = np.random.default_rng(4).random((2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        ref = torch.relu(net[0](torch.from_numpy(imgs).permute(0, 3, 1, 2))).reshape(2, -1).numpy()
    np.testing.assert_allclose(st.features(imgs), ref, rtol=1e-5, atol=1e-6)
    out = make_stage("cnn", module=net, layer="3", input_size=16, normalize=None, device="cpu").features(imgs)
    assert out.shape == (2, 5)


def test_cnn_stage_random_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    a = make_stage("cnn", architecture="resnet18", layer="conv1", input_size=32, device="cpu", seed=5)
    b = make_stage("cnn", architecture="resnet18", layer="conv1", input_size=32, device="cpu", seed=5)
    c = make_stage("cnn", architecture="resnet18", layer="conv1", input_size=32, device="cpu", seed=6)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a.model.conv1.weight, b.model.conv1.weight)
    assert not torch.equal(a.model.conv1.weight, c.model.conv1.weight)


def test_cnn_stage_config_errors(resnet_weights, tmp_path):
    path, model = resnet_weights
    with pytest.raises(ConfigError) as err:
        make_stage("cnn", architecture="resnet19", layer="conv1")
    assert err.value.field == "stage.architecture"
    assert "alexnet" in str(err.value) and "in all" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_stage("cnn", architecture="resnet18", layer="layer9", device="cpu")
    assert err.value.field == "stage.layer"
    assert "conv1, bn1, relu, maxpool, layer1" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_stage("cnn", layer="conv1")
    assert err.value.field == "stage.architecture"
    missing = tmp_path / "missing.pt"
    with pytest.raises(ConfigError) as err:
        make_stage("cnn", architecture="resnet18", layer="conv1", weights=str(missing))
    assert str(err.value) == f"stage.weights: file not found: {missing}"
    sd = model.state_dict()
    sd["fc.weight"] = torch.zeros(10, 512)
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    with pytest.raises(ConfigError) as err:
        make_stage("cnn", architecture="resnet18", layer="conv1", weights=str(bad))
    assert err.value.field == "stage.weights"
    assert "'fc.weight'" in str(err.value) and "(1000, 512)" in str(err.value) and "(10, 512)" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_stage("cnn", architecture="resnet18", layer="conv1", device="tpu")
    assert err.value.field == "stage.device" and "auto, cpu, cuda" in str(err.value)
