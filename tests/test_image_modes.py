"""tlhelpers.data.to_rgb: every image mode a user's folder can hold becomes the RGB a viewer shows."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tlhelpers import data


def _rgb(image: Image.Image, tmp_path, fmt: str = "PNG") -> np.ndarray:
    """Save ``image`` to a file and read it back the way the course's ImageFolder does."""
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, fmt)
    loaded = data._load_rgb(str(path))
    assert loaded.mode == "RGB"
    return np.asarray(loaded)


def test_16_bit_grayscale_is_scaled_not_clipped_to_white(tmp_path):
    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    assert np.asarray(image.convert("RGB"))[0, 1, 0] == 255                 # Pillow alone: nearly white
    pixels = _rgb(image, tmp_path)
    assert pixels[0, :, 0].tolist() == [0, 64, 128, 255] and (pixels[..., 0] == pixels[..., 2]).all()


@pytest.mark.parametrize("values, expected", [([0, 1000, 65535], [0, 4, 255]), ([0, 100, 255], [0, 100, 255])])
def test_32_bit_integer_grayscale(values, expected, tmp_path):
    image = Image.fromarray(np.array([values], dtype=np.int32), mode="I")
    assert np.asarray(data.to_rgb(image))[0, :, 0].tolist() == expected
    assert _rgb(image, tmp_path, "TIFF")[0, :, 0].tolist() == expected


@pytest.mark.parametrize("values, expected", [([0.0, 0.5, 1.0], [0, 128, 255]), ([0.0, 127.6, 300.0], [0, 128, 255])])
def test_float_grayscale(values, expected, tmp_path):
    image = Image.fromarray(np.array([values], dtype=np.float32), mode="F")
    assert np.asarray(data.to_rgb(image))[0, :, 0].tolist() == expected
    assert _rgb(image, tmp_path, "TIFF")[0, :, 0].tolist() == expected


def test_palette_with_a_transparent_colour_is_composited_on_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    image.putpixel((0, 0), 0)       # black, declared transparent below
    image.putpixel((1, 0), 1)       # red
    image.info["transparency"] = 0
    pixels = _rgb(image, tmp_path)
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[0, 1].tolist() == [200, 30, 30]
    assert np.asarray(image.convert("RGB"))[0, 0].tolist() == [0, 0, 0]   # what dropping alpha shows


@pytest.mark.parametrize("mode, color, expected", [
    ("LA", (100, 0), [255, 255, 255]), ("LA", (100, 255), [100, 100, 100]),
    ("RGBA", (10, 20, 30, 0), [255, 255, 255]), ("RGBA", (10, 20, 30, 255), [10, 20, 30]),
])
def test_alpha_is_composited_on_white(mode, color, expected, tmp_path):
    assert _rgb(Image.new(mode, (1, 1), color), tmp_path)[0, 0].tolist() == expected


def test_half_transparent_pixels_blend_with_the_background():
    pixel = np.asarray(data.to_rgb(Image.new("LA", (1, 1), (0, 128))))[0, 0]
    assert 125 <= pixel[0] <= 129


def test_cmyk_becomes_rgb(tmp_path):
    pixels = _rgb(Image.new("CMYK", (1, 1), (0, 255, 255, 0)), tmp_path, "JPEG")
    red, green, blue = pixels[0, 0].tolist()
    assert red > 200 and green < 60 and blue < 60           # cyan-free, full magenta + yellow: red


@pytest.mark.parametrize("mode", ["1", "L", "P", "YCbCr", "RGBa", "La", "HSV"])
def test_other_modes_convert(mode):
    assert data.to_rgb(Image.new(mode, (3, 2))).mode == "RGB"
