"""Affine controls: identities, exact rotations and shifts, and pixel-for-pixel agreement with the reference's
torchvision-on-PIL transforms."""

from __future__ import annotations

import numpy as np
import pytest

from server.engine.affine import affine_controls, rotate, shrink, translate

LABELS = (
    ["rotation:0", "rotation:45", "rotation:90", "rotation:135", "rotation:180", "translation:0"]
    + [f"translation:{p}:{d}" for p in (5, 10, 25, 50) for d in ("right", "left", "down", "up")]
    + ["scale:0.2", "scale:0.4", "scale:0.6", "scale:0.8", "scale:1"]
)


@pytest.fixture
def image():
    return np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)


def test_labels_and_identities(image):
    controls = affine_controls(image)
    assert [label for label, _ in controls] == LABELS
    out = dict(controls)
    for label in ("rotation:0", "translation:0", "scale:1"):
        np.testing.assert_array_equal(out[label], image)
        assert out[label] is not image
    np.testing.assert_array_equal(out["rotation:180"], np.rot90(image, 2))
    np.testing.assert_array_equal(out["rotation:90"], np.rot90(image, 1))  # counter-clockwise
    assert all(img.shape == image.shape and img.dtype == image.dtype for _, img in controls)


def test_translations_shift_by_whole_pixels_and_fill(image):
    out = dict(affine_controls(image, fill=0.25))
    right = out["translation:5:right"]  # int(0.05 * 64) = 3 pixels
    np.testing.assert_array_equal(right[:, 3:], image[:, :-3])
    assert np.all(right[:, :3] == 0.25)
    up = out["translation:50:up"]
    np.testing.assert_array_equal(up[:32], image[32:])
    assert np.all(up[32:] == 0.25)
    np.testing.assert_array_equal(translate(image, -16, 0), np.concatenate([image[:, 16:], np.zeros((64, 16, 3))], 1))


def test_shrink_keeps_size_and_pads_with_fill(image):
    half = shrink(image, 0.5, fill=0.0)
    assert half.shape == image.shape
    assert np.all(half[:16] == 0) and np.all(half[:, :16] == 0) and np.all(half[48:] == 0) and np.all(half[:, 48:] == 0)
    # nearest neighbour at scale 0.5 samples every other source pixel
    np.testing.assert_array_equal(half[16:48, 16:48], image[1::2, 1::2])


def test_rotation_45_keeps_the_centre_and_fills_the_corners():
    img = np.zeros((64, 64, 3), dtype=np.float32)
    img[28:36, 28:36] = 1.0
    rot = rotate(img, 45, fill=0.5)
    assert rot[32, 32, 0] == 1.0 and rot[0, 0, 0] == 0.5 and rot[63, 63, 0] == 0.5
    assert rot[31, 32, 0] == 1.0 and rot[20, 32, 0] == 0.0


@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_controls_match_torchvision_on_pil_images_pixel_for_pixel(shape):
    """The reference applies torchvision.transforms.functional to PIL images; float ("F") images remove the
    8-bit rounding so the geometry can be compared exactly."""
    pytest.importorskip("PIL")
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from PIL import Image

    h, w = shape
    img = np.random.default_rng(1).random((h, w, 3)).astype(np.float32)
    pils = [Image.fromarray(np.ascontiguousarray(img[..., c])) for c in range(3)]

    def ref(fn):
        return np.stack([np.asarray(fn(p), dtype=np.float32) for p in pils], axis=-1)

    expected = {}
    for ang in (0, 45, 90, 135, 180):
        expected[f"rotation:{ang}"] = ref(lambda p: tvf.rotate(p, ang))
    expected["translation:0"] = ref(lambda p: tvf.affine(p, 0, (0, 0), 1.0, 0))
    for pct in (0.05, 0.1, 0.25, 0.5):
        dx, dy = int(pct * w), int(pct * h)
        for name, (tx, ty) in zip(("right", "left", "down", "up"), [(dx, 0), (-dx, 0), (0, dy), (0, -dy)]):
            expected[f"translation:{pct * 100:g}:{name}"] = ref(lambda p: tvf.affine(p, 0, (tx, ty), 1.0, 0))
    for s in (0.2, 0.4, 0.6, 0.8, 1.0):
        expected[f"scale:{s:g}"] = ref(lambda p: tvf.affine(p, angle=0, translate=(0, 0), scale=s, shear=0))

    controls = dict(affine_controls(img))
    assert set(controls) == set(expected)
    for label, want in expected.items():
        np.testing.assert_array_equal(controls[label], want, err_msg=label)
