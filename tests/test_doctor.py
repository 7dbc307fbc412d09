"""The dataset doctor names every broken, odd or misplaced file by path."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from kerastl.commands.doctor import doctor_main as main
from kerastl.data.doctor import diagnose
from kerastl.data.images import find_bad_files, inspect_image, open_rgb

# ---------------------------------------------------------------- image makers
# Shared with tests/test_data.py (candidates for tests/conftest.py).


def noise(size=(32, 32), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)


def save_rgb(path: Path, seed: int = 0, size=(32, 32), **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise(size, seed)).save(path, **kwargs)
    return path


def truncated_jpeg(path: Path) -> Path:
    save_rgb(path, size=(64, 64), format="JPEG", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def text_as_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is a README, not a picture\n")
    return path


def zero_byte(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def cmyk_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    return path


def sixteen_bit_png(path: Path, value: int = 128 * 257) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32), value, np.uint16)).save(path)
    return path


def rgba_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", (32, 32), (10, 20, 30, 0)).save(path)
    return path


def exif_rotated_jpeg(path: Path) -> Path:
    """Stored 40 wide x 20 tall, left half red, right half blue, EXIF orientation 6.

    Orientation 6 means "rotate 90 degrees clockwise to display": shown upright, the
    red half is on top and the blue half at the bottom.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=95)
    return path


def webp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 ")  # never opened: refused by name
    return path


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height but holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


BAD_MAKERS = {
    "truncated.jpg": (truncated_jpeg, "truncated"),
    "readme.png": (text_as_png, "not an image: the .png file holds text"),
    "empty.jpg": (zero_byte, "empty file"),
    "photo.webp": (webp, "unsupported file type '.webp'"),
}


def make_bad_files(folder: Path) -> dict[str, str]:
    """Create one file of each bad kind in ``folder``; return path -> expected reason."""
    return {str(maker(folder / name)): reason for name, (maker, reason) in BAD_MAKERS.items()}


# ---------------------------------------------------------------- single files


@pytest.mark.parametrize("name", list(BAD_MAKERS))
def test_each_bad_file_is_refused_with_its_reason(tmp_path, name):
    maker, reason = BAD_MAKERS[name]
    check = inspect_image(maker(tmp_path / name))
    assert not check.ok
    assert reason in check.reason


@pytest.mark.parametrize(
    ("maker", "name", "note"),
    [
        (cmyk_jpeg, "cmyk.jpg", "CMYK converted to RGB"),
        (sixteen_bit_png, "deep.png", "16-bit scaled to 8-bit"),
        (rgba_png, "alpha.png", "RGBA alpha dropped"),
        (exif_rotated_jpeg, "phone.jpg", "EXIF orientation 6 applied"),
        (lambda path: save_rgb(path, format="PNG"), "png_named.jpg", "PNG data named .jpg"),
    ],
)
def test_convertible_files_are_usable_and_noted(tmp_path, maker, name, note):
    check = inspect_image(maker(tmp_path / name))
    assert check.ok, check.reason
    assert any(note in text for text in check.notes), check.notes


def test_sixteen_bit_pixels_are_scaled_not_clipped(tmp_path):
    # PIL's own convert("L") would clip 32896 to 255 (a white image).
    pixels = np.asarray(open_rgb(sixteen_bit_png(tmp_path / "deep.png", value=128 * 257)))
    assert pixels.shape == (32, 32, 3)
    assert np.all(pixels == 128)


def test_cmyk_decodes_to_the_right_colour(tmp_path):
    pixels = np.asarray(open_rgb(cmyk_jpeg(tmp_path / "cmyk.jpg")), dtype=int)
    assert np.all(np.abs(pixels - (255, 0, 0)).max(axis=-1) < 8)


def test_huge_image_is_refused_from_its_header_without_decoding(tmp_path):
    # The file has no pixel data: decoding it would report "truncated or corrupt".
    check = inspect_image(png_header(tmp_path / "huge.png", 10_000, 10_000))
    assert not check.ok
    assert "too large" in check.reason and "10000x10000" in check.reason


def test_max_pixels_is_configurable(tmp_path):
    path = save_rgb(tmp_path / "small.png")
    assert inspect_image(path).ok
    assert "max_pixels=100" in inspect_image(path, max_pixels=100).reason


def test_truncation_is_detected_even_if_pil_was_told_to_tolerate_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    bad = find_bad_files([str(truncated_jpeg(tmp_path / "cut.jpg"))])
    assert list(bad) == [str(tmp_path / "cut.jpg")]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the user's setting is restored


def test_find_bad_files_returns_only_the_bad_ones(tmp_path):
    good = [str(save_rgb(tmp_path / f"{i}.jpg", seed=i)) for i in range(3)]
    expected = make_bad_files(tmp_path)
    bad = find_bad_files(good + list(expected))
    assert set(bad) == set(expected)


# ---------------------------------------------------------------- whole folders


@pytest.fixture
def messy(tmp_path):
    """train/ and val/ with every kind of problem the doctor reports."""
    train, val = tmp_path / "train", tmp_path / "val"
    for i in range(3):
        save_rgb(train / "cat" / f"{i}.jpg", seed=i)
        save_rgb(train / "dog" / f"{i}.png", seed=10 + i)
    bad = make_bad_files(train / "cat")
    cmyk_jpeg(train / "dog" / "cmyk.jpg")
    save_rgb(train / ".ipynb_checkpoints" / "0-checkpoint.jpg")
    save_rgb(train / "dog" / ".ipynb_checkpoints" / "x.jpg")
    (train / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (train / "bird").mkdir()
    save_rgb(val / "cat" / "copy.jpg", seed=0)  # same bytes as train/cat/0.jpg
    save_rgb(val / "fish" / "0.jpg", seed=99)
    return train, val, bad


def test_diagnose_reports_every_problem_by_path(messy):
    train, val, bad = messy
    report = diagnose(train, val)
    assert report.bad_files.keys() == bad.keys()
    assert report.class_counts == {"bird": 0, "cat": 3, "dog": 4}
    assert report.empty_classes == [str(train / "bird")]
    assert report.notes[str(train / "dog" / "cmyk.jpg")] == ["CMYK converted to RGB"]
    assert set(report.hidden_ignored) == {
        str(train / ".ipynb_checkpoints"),
        str(train / "dog" / ".ipynb_checkpoints"),
        str(train / "cat" / ".DS_Store"),
    }
    assert report.duplicates == [(str(train / "cat" / "0.jpg"), str(val / "cat" / "copy.jpg"))]
    assert report.class_mismatch == {"missing_in_val": ["bird", "dog"], "extra_in_val": ["fish"]}
    assert not report.ok
    text = str(report)
    for path in [*bad, str(train / "bird")]:
        assert path in text
    # Fine conversions are counted by kind, not listed file by file (issue 27).
    assert "1 file(s): CMYK converted to RGB" in text
    assert str(train / "dog" / "cmyk.jpg") not in text


def test_strong_imbalance_is_a_warning_not_a_failure(tmp_path):
    for i in range(11):
        save_rgb(tmp_path / "many" / f"{i}.png", seed=i)
    save_rgb(tmp_path / "few" / "0.png", seed=50)
    report = diagnose(tmp_path)
    assert report.imbalance_ratio == 11.0
    assert any("imbalance" in warning for warning in report.warnings)
    assert report.ok


def test_main_exit_code_and_json(tmp_path, capsys):
    for name in ("a", "b"):
        save_rgb(tmp_path / name / "0.jpg", seed=ord(name))
    assert main([str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["class_counts"] == {"a": 1, "b": 1}
    truncated_jpeg(tmp_path / "a" / "cut.jpg")
    assert main([str(tmp_path)]) == 1
    assert str(tmp_path / "a" / "cut.jpg") in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2


def test_module_runs_from_the_shell(messy):
    train, _, bad = messy
    result = subprocess.run(
        [sys.executable, "-m", "kerastl.doctor", str(train)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    for path in bad:
        assert path in result.stdout
