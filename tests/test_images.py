"""Reading awkward but valid image files, and reporting broken ones."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import cnn_exposed as ce
from cnn_exposed.images import ImageReadError, collect_images, read_image, resize_image


def gradient_rgb(h=20, w=30):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 90)], -1).astype(np.uint8)


@pytest.fixture
def rgb():
    return gradient_rgb()


def test_plain_rgb_png_and_jpeg(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    assert np.abs(read_image(tmp_path / "a.jpg").astype(int) - rgb).mean() < 6


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16", "RGBA", "LA", "1"])
def test_colour_modes_become_rgb(tmp_path, rgb, mode):
    img = Image.fromarray(rgb)
    if mode == "I;16":
        arr = (rgb[..., 0].astype(np.uint16) * 257).astype(np.uint16)
        img = Image.fromarray(arr)  # a uint16 array gives a 16-bit grayscale image
        assert img.mode.startswith("I;16")
        expected = np.repeat(rgb[..., :1], 3, -1)
    elif mode in ("RGBA", "LA"):
        img = img.convert(mode)
        expected = np.asarray(img.convert("RGB"))  # fully opaque: alpha changes nothing
    else:
        img = img.convert(mode)
        expected = np.asarray(img.convert("RGB"))
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    out = read_image(path)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out.astype(int), expected.astype(int), atol=2)


def test_transparent_pixels_composite_over_white(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 0] = 200
    arr[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(arr).save(tmp_path / "t.png")  # (4, 4, 4) uint8 is RGBA
    out = read_image(tmp_path / "t.png")
    assert out[0, 0].tolist() == [200, 0, 0] and out[3, 3].tolist() == [255, 255, 255]


def test_huge_image_is_read_not_refused(tmp_path, rgb, monkeypatch):
    Image.fromarray(rgb).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # as if the image were a "decompression bomb"
    assert read_image(tmp_path / "big.png").shape == (20, 30, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored afterwards
    big = np.zeros((2400, 3200, 3), np.uint8)
    Image.fromarray(big).save(tmp_path / "large.png")
    assert resize_image(read_image(tmp_path / "large.png"), (32, 32)).shape == (32, 32, 3)


def test_odd_file_names(tmp_path, rgb):
    path = tmp_path / "ünïcødé name (1) #2.PNG"
    Image.fromarray(rgb).save(path, format="PNG")
    np.testing.assert_array_equal(read_image(path), rgb)


def test_16_bit_png_via_opencv(tmp_path):
    import cv2

    arr = np.zeros((5, 6, 3), np.uint16)
    arr[..., 2] = 65535  # red in BGR order
    cv2.imwrite(str(tmp_path / "deep.png"), arr)
    out = read_image(tmp_path / "deep.png")
    assert out[0, 0].tolist() == [255, 0, 0]


def test_broken_files_raise_with_reason(tmp_path, rgb):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty file"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "notes.jpg").write_text("these are not pixels")
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(tmp_path / "notes.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(tmp_path / "trunc.png")
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "missing.png")


def test_collect_class_folders_and_plain_folders(tmp_path, rgb):
    for cls in ("dog", "cat"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rgb).save(tmp_path / "data" / cls / f"{i}.png")
    (tmp_path / "data" / "cat" / ".hidden.png").write_bytes(b"")
    (tmp_path / "data" / "cat" / "readme.txt").write_text("x")
    files, classes = collect_images([tmp_path / "data"])
    assert classes == ["cat", "dog"]
    assert [(f.path.parent.name, f.label) for f in files] == [("cat", 0), ("cat", 0), ("dog", 1), ("dog", 1)]
    files, classes = collect_images([tmp_path / "data" / "cat", tmp_path / "data" / "dog" / "0.png"])
    assert classes is None and len(files) == 3 and all(f.label is None for f in files)


def test_without_pyarrow_a_uri_says_what_to_install(monkeypatch):
    """(Runs everywhere: the stages without the ray extra have no pyarrow.)"""
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.fs", None)
    with pytest.raises(ce.InputError, match=r"needs pyarrow: pip install \"cnn-exposed\[ray\]\""):
        ce.explain(ce.load_model("demo"), "s3://a-bucket-never-opened/photos", "gradcam")
