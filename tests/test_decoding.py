"""Decoding in tf.data: PIL's pixels within 1, PIL only where needed, a bounded store."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kerastl.core.errors import ConfigError, DataError
from kerastl.data.decoding import (
    DECODE_METHOD,
    check_files,
    decoded_memory_budget,
    file_pixels,
)
from kerastl.data.folders import from_folder
from kerastl.data.images import decoder_for, open_rgb, square_pixels
from kerastl.data.splits import load_splits
from kerastl.recipes.resolve import resolve_config
from tests.test_doctor import (
    cmyk_jpeg,
    exif_rotated_jpeg,
    make_bad_files,
    rgba_png,
    save_rgb,
    sixteen_bit_png,
    truncated_jpeg,
)

# Measured: TensorFlow's decoders give PIL's pixels exactly (JPEG with the accurate
# integer DCT); the antialiased bilinear resize is within 1 of PIL's BILINEAR.
MAX_ABS_DIFFERENCE = 1
MAX_MEAN_DIFFERENCE = 0.3


def smooth(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like image: coarse random colours, bicubically enlarged."""
    coarse = np.random.default_rng(seed).integers(0, 256, (height // 4 + 1, width // 4 + 1, 3))
    return np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height),
                                                                       Image.BICUBIC))


@pytest.mark.parametrize("size", [16, 32, 96])
@pytest.mark.parametrize("name", ["rgb.jpg", "rgb.png", "grey.jpg", "grey.png", "noise.png"])
def test_tensorflow_pixels_are_pils_within_one(tmp_path, name, size):
    for shape in ((28, 28), (75, 50), (33, 77)):
        pixels = smooth(*shape, seed=sum(shape))
        if name == "noise.png":
            pixels = np.random.default_rng(0).integers(0, 256, pixels.shape).astype(np.uint8)
        path = tmp_path / f"{shape[0]}x{shape[1]}-{name}"
        Image.fromarray(pixels[..., 0] if name.startswith("grey") else pixels).save(
            path, quality=90)
        with Image.open(path) as image:
            assert decoder_for(image) == "tf"
        ours = next(iter(file_pixels([str(path)], np.zeros(1, bool), size))).numpy()
        pil = square_pixels(open_rgb(path), size)
        difference = np.abs(ours.astype(int) - pil)
        assert ours.dtype == np.uint8 and ours.shape == (size, size, 3)
        assert difference.max() <= MAX_ABS_DIFFERENCE, (path.name, difference.max())
        assert difference.mean() <= MAX_MEAN_DIFFERENCE, (path.name, difference.mean())


def test_files_tensorflow_would_misread_go_to_pil(tmp_path):
    makers = {"phone.jpg": exif_rotated_jpeg, "cmyk.jpg": cmyk_jpeg,
              "deep.png": sixteen_bit_png, "alpha.png": rgba_png}
    paths = [str(maker(tmp_path / name)) for name, maker in makers.items()]
    paths.append(str(save_rgb(tmp_path / "plain.png")))
    bad, use_pil = check_files(paths, "header")
    assert not bad
    assert use_pil.tolist() == [True, True, True, True, False]


def test_header_check_finds_what_headers_show_and_none_opens_nothing(tmp_path):
    bad_files = make_bad_files(tmp_path)
    truncated = str(truncated_jpeg(tmp_path / "cut.jpg"))
    paths = [*bad_files, truncated]
    full, _ = check_files(paths, "full")
    header, _ = check_files(paths, "header")
    assert set(full) == set(paths)
    # A truncated file has a sound header: only decoding finds it.
    assert set(header) == set(paths) - {truncated, str(tmp_path / "truncated.jpg")}
    assert check_files(paths, "none")[0] == {}
    with pytest.raises(ConfigError, match="check_files='fast'"):
        check_files(paths, "fast")


def test_the_full_check_reports_the_doctors_reasons_in_file_order(tmp_path):
    good = [str(save_rgb(tmp_path / f"{i}.png", seed=i)) for i in range(3)]
    expected = make_bad_files(tmp_path)
    paths = [good[0], *expected, *good[1:]]
    bad, _ = check_files(paths, "full", image_size=8, store=np.zeros((len(paths), 8, 8, 3),
                                                                      np.uint8))
    assert list(bad) == list(expected)
    for path, reason in expected.items():
        assert reason in bad[path]


def test_the_full_check_fills_the_store_with_training_pixels(tmp_path):
    paths = [str(save_rgb(tmp_path / f"{i}.jpg", seed=i, size=(40, 30))) for i in range(5)]
    paths.insert(2, str(truncated_jpeg(tmp_path / "cut.jpg")))  # fails mid-pipeline
    paths.insert(4, str(cmyk_jpeg(tmp_path / "cmyk.jpg")))  # the PIL branch
    paths.append(str(save_rgb(tmp_path / "last.png", seed=9)))  # decode_image's branch
    store = np.zeros((len(paths), 12, 12, 3), np.uint8)
    bad, use_pil = check_files(paths, "full", image_size=12, store=store)
    assert list(bad) == [paths[2]] and use_pil.tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    good = [i for i in range(len(paths)) if i != 2]
    expected = np.stack([x.numpy() for x in file_pixels([paths[i] for i in good],
                                                        use_pil[good], 12)])
    np.testing.assert_array_equal(store[good], expected)  # every row where it belongs
    assert not store[2].any()


def test_no_store_is_allocated_past_the_budget(tmp_path):
    for i in range(4):
        save_rgb(tmp_path / "a" / f"{i}.png", seed=i)
        save_rgb(tmp_path / "b" / f"{i}.png", seed=10 + i)
    splits = load_splits(tmp_path, val_split=0.25, image_size=32, decoded_memory="20k")
    assert not splits.train._pixels  # 8 images at 32 px need 24 KiB
    batches = list(splits.train.batches(32, 4, shuffle_seed=0))
    assert sum(len(x) for x, _ in batches) == 6 and not splits.train._pixels
    kept = load_splits(tmp_path, val_split=0.25, image_size=32, decoded_memory="24k")
    assert kept.train._pixels[32][0] is kept.val._pixels[32][0]


def test_the_fingerprint_records_the_decoder(tmp_path):
    save_rgb(tmp_path / "a" / "0.png")
    save_rgb(tmp_path / "b" / "0.png", seed=1)
    data = from_folder(tmp_path)
    other = from_folder(tmp_path)
    other.use_pil = np.ones(2, bool)
    assert data.fingerprint() != other.fingerprint()
    assert "decode_jpeg" in DECODE_METHOD and "PIL" in DECODE_METHOD


@pytest.mark.parametrize("setting, expected", [("512M", 512 * 2**20), ("2G", 2 * 2**30),
                                               ("1.5k", 1536), (0, 0), ("100", 100)])
def test_decoded_memory_sizes(setting, expected):
    assert decoded_memory_budget(setting) == expected


def test_auto_budget_is_a_share_of_available_memory(monkeypatch):
    import kerastl.data.decoding as decoding

    monkeypatch.setattr(decoding, "available_memory", lambda: 4 * 2**30)
    assert decoded_memory_budget("auto") == int(decoding.DECODED_MEMORY_SHARE * 4 * 2**30)


def test_auto_budget_is_capped_so_large_sets_stream(monkeypatch):
    import kerastl.data.decoding as decoding

    monkeypatch.setattr(decoding, "available_memory", lambda: 64 * 2**30)
    assert decoded_memory_budget("auto") == 2**30
    monkeypatch.setattr(decoding, "available_memory", lambda: 100 * 2**30)
    # 60,000 images at 128 px (2.9 GB) stream even on a large machine; 15,000 are kept
    assert 60_000 * 128 * 128 * 3 > decoded_memory_budget("auto") >= 15_000 * 128 * 128 * 3


def test_unusable_budget_is_refused_quoting_it():
    with pytest.raises(ConfigError, match="decoded_memory='lots'"):
        decoded_memory_budget("lots")


def test_without_a_check_plain_files_give_the_same_pixels(tmp_path):
    for i in range(2):
        save_rgb(tmp_path / "a" / f"{i}.jpg", seed=i, quality=90)
        save_rgb(tmp_path / "b" / f"{i}.png", seed=5 + i)
    batches = [np.concatenate([x.numpy() for x, _ in from_folder(
        tmp_path, check_files=mode).batches(24, 4)]) for mode in ("full", "none")]
    np.testing.assert_array_equal(*batches)


@pytest.mark.parametrize("settings, kept", [
    ({"mode": "frozen"}, "0"),  # cached features: each image is read once
    ({"mode": "frozen", "augment": ["flip"]}, "auto"),
    ({"mode": "frozen", "feature_cache": "off"}, "auto"),
    ({"mode": "finetune"}, "auto"),
    ({"mode": "frozen", "decoded_memory": "1G"}, "1G"),  # given: never second-guessed
])
def test_a_run_keeps_decoded_images_only_where_it_reads_them_again(settings, kept):
    from kerastl.config.schema import RunConfig
    from kerastl.recipes.resolve import decoded_memory_setting

    config = resolve_config(RunConfig(data="data_samples/fashion/train", **settings))
    assert decoded_memory_setting(config) == kept


def test_a_truncated_file_met_in_training_after_a_header_check_is_named(tmp_path):
    import kerastl

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / name / f"{i}.jpg", quality=90)
    cut = tmp_path / "data" / "a" / "1.jpg"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    config = kerastl.RunConfig(data=str(tmp_path / "data"), backbone="MobileNetV2",
                               backbone_kwargs={"alpha": 0.35}, weights="none",
                               mode="frozen", feature_cache="off", image_size=32, epochs=1,
                               batch_size=2, val_split=0, check_files="header",
                               output=str(tmp_path / "run"), verbose=0)
    with pytest.raises(DataError, match=r"--check-files header .*1 truncated file\(s\): "
                                        r"'.*1\.jpg'\. Rerun with --check-files full"):
        kerastl.fit(config)
