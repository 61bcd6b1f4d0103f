"""16-bit and 32-bit-integer greyscale images are read at their brightness, not clipped to white; the
class ids of a 16-bit mask are read as they are."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from semaim.data import open_dataset
from semaim.data.folders import ImageFolder, hash_files, open_image
from semaim.errors import BadImageError, DataError
from semaim.evaluate.segmentation.masks import MaskFolder
from tests.conftest import make_image_folder

RAMP = np.linspace(0, 65535, 12 * 10).round().astype(np.uint16).reshape(12, 10)  # black to white
EXPECTED = ((RAMP.astype(np.uint32) + 128) // 257).astype(np.uint8)  # the same ramp in 8 bits


def write_ramp(path, mode: str = "I;16") -> None:
    """``RAMP`` as ``mode``: PNG for the little-endian 16-bit mode, TIFF for the big-endian one, 16-bit
    PGM for ``I`` (Pillow opens a PGM with a maxval above 255 as a 32-bit integer image)."""
    if mode == "I;16":
        Image.fromarray(RAMP).save(path)
    elif mode == "I;16B":
        Image.frombytes("I;16B", RAMP.shape[::-1], RAMP.astype(">u2").tobytes()).save(path)
    else:
        path.write_bytes(b"P5 10 12 65535\n" + RAMP.astype(">u2").tobytes())
    with Image.open(path) as img:
        assert img.mode == mode  # the file really is what the test says


@pytest.mark.parametrize("mode, name", [("I;16", "ramp.png"), ("I;16B", "ramp.tif"), ("I", "ramp.pgm")])
def test_a_16_bit_greyscale_image_keeps_its_brightness(tmp_path, mode, name):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        write_ramp(tmp_path / cls / name, mode)
    data = ImageFolder(tmp_path)
    grey = np.asarray(ImageFolder(tmp_path, "L").load(0))
    rgb = np.asarray(data.load(0))
    assert np.array_equal(grey, EXPECTED)  # not 255 everywhere but the first pixel
    assert rgb.shape == (12, 10, 3) and all(np.array_equal(rgb[..., c], EXPECTED) for c in range(3))
    assert np.asarray(open_dataset(str(tmp_path), "train").load(1)).mean() == pytest.approx(
        EXPECTED.mean(), abs=1
    )


def test_features_cached_before_16_bit_images_were_scaled_are_not_reused(tmp_path):
    make_image_folder(tmp_path, per_class=1)
    data = ImageFolder(tmp_path)
    clipped_key = hashlib.sha1(json.dumps([data.mode, data.classes]).encode())  # while 16 bits clipped
    assert data.fingerprint() != hash_files(clipped_key, tmp_path, data.files)


def test_8_bit_images_are_read_unchanged(tmp_path):
    pixels = np.arange(120, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(pixels).save(tmp_path / "grey.png")
    Image.fromarray(np.stack([pixels] * 3, -1)).save(tmp_path / "rgb.png")
    assert np.array_equal(np.asarray(open_image(tmp_path / "grey.png", "L")), pixels)
    assert np.array_equal(np.asarray(open_image(tmp_path / "rgb.png", "RGB"))[..., 1], pixels)


def test_an_integer_image_beyond_16_bits_is_named_not_clipped(tmp_path):
    Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)).save(tmp_path / "deep.tif")
    with pytest.raises(BadImageError, match=r"deep\.tif.*70000"):
        open_image(tmp_path / "deep.tif", "RGB")


# --------------------------------------------------------------------------- masks are class ids, not brightness
def mask_folder(root, mask: np.ndarray):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((*mask.shape, 3), dtype=np.uint8)).save(root / "images" / "x.png")
    Image.fromarray(mask.astype(np.uint16)).save(root / "masks" / "x.png")
    with Image.open(root / "masks" / "x.png") as img:
        assert img.mode == "I;16"


def test_a_16_bit_mask_keeps_its_class_ids(tmp_path):
    ids = np.arange(12 * 10).reshape(12, 10) % 3
    ids[0, 0] = 255  # the ignore value stays the ignore value
    mask_folder(tmp_path, ids)
    data = MaskFolder(tmp_path, num_classes=3)
    data.check_masks(3)
    _, mask = data.load_pair(0)
    assert np.array_equal(mask.numpy(), ids)


def test_a_16_bit_mask_id_beyond_the_classes_is_named(tmp_path):
    ids = np.zeros((6, 5), dtype=np.int64)
    ids[2, 3] = 300  # would be 1 if the mask were scaled like an image
    mask_folder(tmp_path, ids)
    with pytest.raises(DataError, match=r"masks/x\.png: class id 300 >= num_classes 3"):
        MaskFolder(tmp_path, num_classes=3).check_masks(3)
