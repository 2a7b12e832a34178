"""One builder for every probe: the reference an image file gives is the same picture for an in-silico run,
a live session and that session rebuilt after a restart, also when the generator cannot encode it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from server.config import parse_config
from server.engine.generators import GENERATORS, DCTGenerator
from server.insilico import run_probe
from server.probe_setup import load_reference, read_image
from server.service import SessionCreate, SessionService
from server.stored import rebuild

pytest_plugins = ["db_fixtures"]

GEN = {"name": "dct", "code_size": 64, "image_size": 16, "channels": 1}
PROBE = {"mode": "invariance", "seed": 2, "population": 8, "generations": 2, "stages": ["pixel"], "generator": GEN}


class DrawOnlyDCT(DCTGenerator):
    """A generator that renders but cannot encode (as a learned decoder without an encoder)."""

    name = "dct-draw-only"

    def encode(self, images):
        raise NotImplementedError("cannot encode")


@pytest.fixture
def picture(tmp_path):
    """A 40x40 photo-like picture: the resize to 16x16 has to filter it, so filters would differ."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "ref.png")
    return tmp_path / "ref.png"


def _bilinear(path, size):
    """What Pillow's bilinear resize gives, computed here from the file."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0


def _create_live(repo, probe, picture):
    """A live session with an image reference, created the way the operator's API creates it."""
    service = SessionService(repo, bind="tcp://127.0.0.1:0")
    try:
        return service.create(SessionCreate(operator="t", subject_id="m", probe=probe,
                                             reference={"source": "image", "path": str(picture)}))
    finally:
        service.close()


def test_in_silico_and_live_load_the_same_reference_image(picture, repo):
    expected = _bilinear(picture, 16)
    assert np.abs(expected - _bicubic(picture)).max() > 1 / 255  # the filters do differ on this file
    # (check_repeats 0: this picture barely drives the unit; the reference check is tested in test_probe_claims)
    cfg = parse_config(PROBE | {"reference": {"source": "image", "path": str(picture), "check_repeats": 0},
                                "subject": {"name": "complex-cell", "wavelength": 6}})
    result = run_probe(cfg)
    np.testing.assert_array_equal(result.reference_image, expected)
    sid = _create_live(repo, PROBE, picture)
    np.testing.assert_array_equal(rebuild(repo, sid).reference_image, expected)


def test_a_live_image_reference_the_generator_cannot_encode_survives_a_restart(picture, repo, monkeypatch):
    monkeypatch.setitem(GENERATORS, "dct-draw-only", DrawOnlyDCT)
    gen = PROBE["generator"] | {"name": "dct-draw-only"}
    code, img = load_reference("image", picture, DrawOnlyDCT(**{k: v for k, v in gen.items() if k != "name"}))
    assert code is None
    probe = PROBE | {"generator": gen, "start_from": "noise"}
    sid = _create_live(repo, probe, picture)
    stored = rebuild(repo, sid)  # what a start (or a start after a restart) does first
    assert "reference_code" not in repo.load_resume_point(sid).config
    np.testing.assert_array_equal(stored.reference_image, img)
    np.testing.assert_array_equal(stored.reference_image, read_image(picture, (16, 16)))


def _bicubic(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((16, 16), Image.BICUBIC), dtype=np.float32) / 255.0
