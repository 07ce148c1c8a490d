"""Tests for the image-folder reader (PNG/JPEG slices with optional masks)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungct_kedro.readers import READERS, InvalidSourceError, SkippedFile
from lungct_kedro.readers.images import read_image_folder

# Class pixel totals over the 50 multiclass masks of the real sample, counted pixel by pixel.
GGO_PIXELS = 560_121
CONSOLIDATION_PIXELS = 326_093
BACKGROUND_PIXELS = 5_807_318
UNLABELED_PATTERNS = {
    "volume_pattern": r"^Data-\d+_(.+)_\d+$",
    "patient_pattern": r"^Data-\d+_(.+)_\d+$",
    "slice_pattern": r"_(\d+)$",
}


def save_gray(path: Path, values: np.ndarray) -> Path:
    """Write an 8-bit or 16-bit grayscale image (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values)).save(path)
    return path


def save_palette(path: Path, indices: np.ndarray, colours: list[tuple[int, int, int]]) -> Path:
    """Write a mode-P PNG whose stored indices are ``indices``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    indices = np.asarray(indices, dtype=np.uint8)
    image = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.tobytes())
    flat = [channel for colour in colours for channel in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    image.save(path)
    return path


def make_pair_folder(root: Path, count: int = 3, size: tuple[int, int] = (6, 8)) -> Path:
    """Write ``count`` 8-bit PNG images with binary {0, 1} masks under images/ and masks/."""
    rows, columns = size
    for number in range(count):
        save_gray(root / "images" / f"{number}.png", np.full((rows, columns), 10 * number, dtype=np.uint8))
        mask = np.zeros((rows, columns), dtype=np.uint8)
        mask[0, : number + 1] = 1
        save_gray(root / "masks" / f"{number}.png", mask)
    return root


PAIR_OPTIONS = {"images": "images", "masks": "masks", "mask_format": "index"}


# --- real sample -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multiclass_slices(shared_data_dir: Path) -> list:
    options = {"images": "images", "masks": "masks_multiclass", "mask_format": "palette"}
    return list(read_image_folder(shared_data_dir / "segmentation", options))


@pytest.fixture(scope="module")
def unlabeled_slices(shared_data_dir: Path) -> list:
    return list(read_image_folder(shared_data_dir / "unlabeled", UNLABELED_PATTERNS))


def test_segmentation_pairs_all_images(multiclass_slices: list) -> None:
    assert len(multiclass_slices) == 50
    assert all(item.mask is not None for item in multiclass_slices)
    assert all(item.mask.shape == item.pixels.shape for item in multiclass_slices)
    assert all(item.file_key.startswith("images/") for item in multiclass_slices)


def test_segmentation_pixels_scaled(multiclass_slices: list) -> None:
    assert all(item.pixels.dtype == np.float32 for item in multiclass_slices)
    assert all(item.mask.dtype == np.uint8 for item in multiclass_slices)
    assert all(not item.is_hu for item in multiclass_slices)
    assert min(float(item.pixels.min()) for item in multiclass_slices) >= 0.0
    assert max(float(item.pixels.max()) for item in multiclass_slices) <= 1.0


def test_segmentation_sizes_match_index(multiclass_slices: list, shared_data_dir: Path) -> None:
    index = pd.read_csv(shared_data_dir / "segmentation" / "index.csv", dtype={"image": str})
    expected = {row.image: (row.height, row.width) for row in index.itertuples()}
    found = {item.file_key: item.pixels.shape for item in multiclass_slices}
    assert found == expected


@pytest.mark.parametrize("mask_format", ["palette", "auto"])
def test_segmentation_class_totals(shared_data_dir: Path, mask_format: str) -> None:
    options = {"images": "images", "masks": "masks_multiclass", "mask_format": mask_format}
    counts: Counter[int] = Counter()
    for item in read_image_folder(shared_data_dir / "segmentation", options):
        values, totals = np.unique(item.mask, return_counts=True)
        counts.update(dict(zip(values.tolist(), totals.tolist(), strict=True)))
    assert set(counts) <= {0, 1, 2}
    assert counts[1] == GGO_PIXELS
    assert counts[2] == CONSOLIDATION_PIXELS
    assert counts[0] == BACKGROUND_PIXELS


@pytest.mark.parametrize("mask_format", ["binary", "auto"])
def test_binary_masks_match_multiclass(shared_data_dir: Path, multiclass_slices: list, mask_format: str) -> None:
    options = {"images": "images", "masks": "masks_binary", "mask_format": mask_format}
    binary = {item.file_key: item.mask for item in read_image_folder(shared_data_dir / "segmentation", options)}
    multiclass = {item.file_key: item.mask for item in multiclass_slices}
    assert set(binary) == set(multiclass)
    assert set(np.unique(np.concatenate([mask.ravel() for mask in binary.values()])).tolist()) == {0, 1}
    mismatched = [key for key in multiclass if not np.array_equal(binary[key], (multiclass[key] > 0).astype(np.uint8))]
    assert mismatched == []


def test_unlabeled_groups_seven_volumes(unlabeled_slices: list, shared_data_dir: Path) -> None:
    index = pd.read_csv(shared_data_dir / "unlabeled" / "index.csv", dtype=str)
    expected = Counter(index["volume_id"])
    found = Counter(item.volume_key for item in unlabeled_slices)
    assert len(unlabeled_slices) == 155
    assert len(found) == 7
    assert found == expected


def test_unlabeled_volumes_ordered_by_slice(unlabeled_slices: list) -> None:
    volume_order = [item.volume_key for item in unlabeled_slices]
    runs = [key for position, key in enumerate(volume_order) if position == 0 or volume_order[position - 1] != key]
    assert len(runs) == 7, "each volume must come as one contiguous run"
    for volume in set(volume_order):
        indices = [item.slice_index for item in unlabeled_slices if item.volume_key == volume]
        assert indices == sorted(indices), volume
        assert len(set(indices)) == len(indices), volume


def test_unlabeled_keys_from_file_name(unlabeled_slices: list) -> None:
    by_file = {item.file_key: item for item in unlabeled_slices}
    example = by_file["Data-1_coronacases_org_001_17.jpg"]
    assert example.volume_key == "coronacases_org_001"
    assert example.patient_key == "coronacases_org_001"
    assert example.slice_index == 17
    assert example.mask is None
    assert "index.csv" not in by_file


def test_readers_registry_exports_image_folder() -> None:
    assert READERS["image_folder"] is read_image_folder


# --- intensity conversion ----------------------------------------------------------------------


def test_eight_bit_divided_by_255(tmp_path: Path) -> None:
    save_gray(tmp_path / "a.png", np.array([[0, 51, 255]], dtype=np.uint8))
    (item,) = read_image_folder(tmp_path, {})
    np.testing.assert_allclose(item.pixels, [[0.0, 0.2, 1.0]], atol=1e-6)
    assert item.pixels.dtype == np.float32
    assert item.file_key == "a.png"


def test_sixteen_bit_png_divided_by_65535(tmp_path: Path) -> None:
    stored = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    save_gray(tmp_path / "a.png", stored)
    assert Image.open(tmp_path / "a.png").mode.startswith("I")
    (item,) = read_image_folder(tmp_path, {})
    np.testing.assert_allclose(item.pixels, stored / 65535.0, atol=1e-6)
    assert item.pixels.dtype == np.float32


def test_rgb_converted_by_luminance(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    colour = np.zeros((2, 3, 3), dtype=np.uint8)
    colour[0, 0] = (255, 0, 0)
    colour[0, 1] = (0, 255, 0)
    colour[0, 2] = (0, 0, 255)
    colour[1, :] = (255, 255, 255)
    Image.fromarray(colour).save(tmp_path / "a.png")
    Image.fromarray(colour).save(tmp_path / "b.png")
    with caplog.at_level(logging.INFO, logger="lungct_kedro.readers.images"):
        slices = list(read_image_folder(tmp_path, {}))
    np.testing.assert_allclose(slices[0].pixels[0], [0.299, 0.587, 0.114], atol=1e-5)
    np.testing.assert_allclose(slices[0].pixels[1], [1.0, 1.0, 1.0], atol=1e-5)
    colour_logs = [record for record in caplog.records if "grayscale" in record.getMessage()]
    assert len(colour_logs) == 1


# --- masks -------------------------------------------------------------------------------------

PALETTE = [(0, 0, 0), (128, 0, 0), (0, 128, 0)]


@pytest.mark.parametrize(
    ("kind", "stored", "mask_format", "expected"),
    [
        ("gray", [0, 255, 255], "binary", [0, 1, 1]),
        ("gray", [0, 1, 0], "binary", [0, 1, 0]),
        ("gray", [0, 1, 2], "index", [0, 1, 2]),
        ("gray", [0, 255, 0], "auto", [0, 1, 0]),
        ("gray", [0, 2, 1], "auto", [0, 2, 1]),
        ("palette", [0, 1, 2], "palette", [0, 1, 2]),
        ("palette", [2, 0, 1], "auto", [2, 0, 1]),
        ("palette", [0, 1, 2], "index", [0, 1, 2]),
    ],
)
def test_mask_format_conversion(
    tmp_path: Path, kind: str, stored: list[int], mask_format: str, expected: list[int]
) -> None:
    save_gray(tmp_path / "images" / "s.png", np.zeros((1, 3), dtype=np.uint8))
    if kind == "palette":
        save_palette(tmp_path / "masks" / "s.png", np.array([stored]), PALETTE)
    else:
        save_gray(tmp_path / "masks" / "s.png", np.array([stored], dtype=np.uint8))
    options = {"images": "images", "masks": "masks", "mask_format": mask_format}
    (item,) = read_image_folder(tmp_path, options)
    assert item.mask.dtype == np.uint8
    assert item.mask.tolist() == [expected]


def test_palette_indices_not_colours(tmp_path: Path) -> None:
    save_gray(tmp_path / "images" / "s.png", np.zeros((1, 2), dtype=np.uint8))
    # Index 1 draws as light grey; reading colours or converting to L would give about 200.
    save_palette(tmp_path / "masks" / "s.png", np.array([[0, 1]]), [(0, 0, 0), (200, 200, 200)])
    (item,) = read_image_folder(tmp_path, {"images": "images", "masks": "masks", "mask_format": "palette"})
    assert item.mask.tolist() == [[0, 1]]


def test_palette_format_rejects_grayscale(tmp_path: Path) -> None:
    make_pair_folder(tmp_path, count=1)
    with pytest.raises(InvalidSourceError) as caught:
        list(read_image_folder(tmp_path, {**PAIR_OPTIONS, "mask_format": "palette"}))
    assert "0.png" in str(caught.value)
    assert "mode L" in str(caught.value)


def test_binary_format_rejects_class_values(tmp_path: Path) -> None:
    save_gray(tmp_path / "images" / "s.png", np.zeros((1, 3), dtype=np.uint8))
    save_gray(tmp_path / "masks" / "s.png", np.array([[0, 1, 2]], dtype=np.uint8))
    with pytest.raises(InvalidSourceError) as caught:
        list(read_image_folder(tmp_path, {"images": "images", "masks": "masks", "mask_format": "binary"}))
    assert "s.png" in str(caught.value)
    assert "[0, 1, 2]" in str(caught.value)


@pytest.mark.parametrize(
    ("missing_mask", "expected"),
    [("none", None), ("empty", [[0, 0, 0, 0]] * 2)],
)
def test_missing_mask_modes(tmp_path: Path, missing_mask: str, expected: list | None) -> None:
    save_gray(tmp_path / "images" / "a.png", np.zeros((2, 4), dtype=np.uint8))
    (tmp_path / "masks").mkdir()
    options = {"images": "images", "masks": "masks", "missing_mask": missing_mask}
    (item,) = read_image_folder(tmp_path, options)
    if expected is None:
        assert item.mask is None
    else:
        assert item.mask.dtype == np.uint8
        assert item.mask.tolist() == expected


def test_missing_mask_error_names_image(tmp_path: Path) -> None:
    make_pair_folder(tmp_path, count=2)
    save_gray(tmp_path / "images" / "lonely.png", np.zeros((6, 8), dtype=np.uint8))
    options = {**PAIR_OPTIONS, "missing_mask": "error"}
    with pytest.raises(InvalidSourceError) as caught:
        list(read_image_folder(tmp_path, options))
    assert "lonely.png" in str(caught.value)

    skipped: list[SkippedFile] = []
    slices = list(read_image_folder(tmp_path, options, skipped))
    assert [item.file_key for item in slices] == ["images/0.png", "images/1.png"]
    assert [Path(entry.path).name for entry in skipped] == ["lonely.png"]


def test_mask_without_image_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_pair_folder(tmp_path, count=1)
    save_gray(tmp_path / "masks" / "orphan.png", np.zeros((6, 8), dtype=np.uint8))
    with caplog.at_level(logging.WARNING, logger="lungct_kedro.readers.images"):
        slices = list(read_image_folder(tmp_path, PAIR_OPTIONS))
    assert len(slices) == 1
    assert any("orphan.png" in record.getMessage() for record in caplog.records)


# --- ordering and keys -------------------------------------------------------------------------


def test_slices_ordered_by_slice_number(tmp_path: Path) -> None:
    for name in ["scan_b_3", "scan_a_10", "scan_a_2", "scan_a_1"]:
        save_gray(tmp_path / f"{name}.png", np.zeros((2, 2), dtype=np.uint8))
    options = {"volume_pattern": r"^(scan_[a-z])_", "slice_pattern": r"_(\d+)$"}
    slices = list(read_image_folder(tmp_path, options))
    assert [item.file_key for item in slices] == ["scan_a_1.png", "scan_a_2.png", "scan_a_10.png", "scan_b_3.png"]
    assert [item.slice_index for item in slices] == [1, 2, 10, 3]
    assert [item.volume_key for item in slices] == ["scan_a", "scan_a", "scan_a", "scan_b"]
    assert all(item.patient_key is None for item in slices)


def test_volume_without_slice_pattern_uses_names(tmp_path: Path) -> None:
    for name in ["v_10", "v_9", "w_1"]:
        save_gray(tmp_path / f"{name}.png", np.zeros((2, 2), dtype=np.uint8))
    slices = list(read_image_folder(tmp_path, {"volume_pattern": r"^([a-z])_"}))
    assert [item.file_key for item in slices] == ["v_9.png", "v_10.png", "w_1.png"]
    assert [item.slice_index for item in slices] == [0, 1, 0]


def test_pattern_mismatch_names_file(tmp_path: Path) -> None:
    save_gray(tmp_path / "case_1.png", np.zeros((2, 2), dtype=np.uint8))
    save_gray(tmp_path / "odd.png", np.zeros((2, 2), dtype=np.uint8))
    options = {"slice_pattern": r"_(\d+)$"}
    with pytest.raises(InvalidSourceError) as caught:
        read_image_folder(tmp_path, options)
    assert "odd.png" in str(caught.value)
    assert "slice_pattern" in str(caught.value)

    skipped: list[SkippedFile] = []
    slices = list(read_image_folder(tmp_path, options, skipped))
    assert [item.file_key for item in slices] == ["case_1.png"]
    assert [Path(entry.path).name for entry in skipped] == ["odd.png"]


def test_duplicate_slice_number_rejected(tmp_path: Path) -> None:
    save_gray(tmp_path / "v_01.png", np.zeros((2, 2), dtype=np.uint8))
    save_gray(tmp_path / "v_1.png", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(InvalidSourceError) as caught:
        read_image_folder(tmp_path, {"volume_pattern": r"^(v)_", "slice_pattern": r"_(\d+)$"})
    assert "slice index 1" in str(caught.value)


# --- invalid files -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    for name in ["a", "b", "c"]:
        save_gray(tmp_path / f"{name}{suffix}", rng.integers(0, 255, (64, 64), dtype=np.uint8))
    broken = tmp_path / f"b{suffix}"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])

    with pytest.raises(InvalidSourceError) as caught:
        list(read_image_folder(tmp_path, {}))
    assert f"b{suffix}" in str(caught.value)
    assert "skip_invalid" in str(caught.value)

    skipped: list[SkippedFile] = []
    slices = list(read_image_folder(tmp_path, {}, skipped))
    assert [item.file_key for item in slices] == [f"a{suffix}", f"c{suffix}"]
    assert len(skipped) == 1
    assert Path(skipped[0].path).name == f"b{suffix}"


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    make_pair_folder(tmp_path, count=2, size=(6, 8))
    save_gray(tmp_path / "masks" / "1.png", np.zeros((5, 7), dtype=np.uint8))
    with pytest.raises(InvalidSourceError) as caught:
        list(read_image_folder(tmp_path, PAIR_OPTIONS))
    message = str(caught.value)
    assert "images/1.png" in message.replace("\\", "/")
    assert "masks/1.png" in message.replace("\\", "/")
    assert "8x6" in message
    assert "7x5" in message

    skipped: list[SkippedFile] = []
    slices = list(read_image_folder(tmp_path, PAIR_OPTIONS, skipped))
    assert [item.file_key for item in slices] == ["images/0.png"]
    assert len(skipped) == 1


def test_mask_value_outside_allowed(tmp_path: Path) -> None:
    make_pair_folder(tmp_path, count=3)
    bad = np.zeros((6, 8), dtype=np.uint8)
    bad[2, 2] = 7
    save_gray(tmp_path / "masks" / "2.png", bad)
    with pytest.raises(InvalidSourceError) as caught:
        list(read_image_folder(tmp_path, PAIR_OPTIONS))
    message = str(caught.value)
    assert "2.png" in message
    assert "[7]" in message
    assert "mask_values" in message

    skipped: list[SkippedFile] = []
    slices = list(read_image_folder(tmp_path, PAIR_OPTIONS, skipped))
    assert [item.file_key for item in slices] == ["images/0.png", "images/1.png"]
    assert [Path(entry.path).name for entry in skipped] == ["2.png"]

    (item,) = [s for s in read_image_folder(tmp_path, {**PAIR_OPTIONS, "mask_values": [0, 1, 7]}) if s.mask.max() == 7]
    assert item.file_key == "images/2.png"


@pytest.mark.parametrize("skipped", [None, []])
def test_empty_folder_raises(tmp_path: Path, skipped: list | None) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InvalidSourceError) as caught:
        read_image_folder(tmp_path, {}, skipped)
    assert str(tmp_path) in str(caught.value)
    assert "no image files" in str(caught.value)


@pytest.mark.parametrize("skipped", [None, []])
def test_missing_path_raises(tmp_path: Path, skipped: list | None) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(InvalidSourceError) as caught:
        read_image_folder(missing, {}, skipped)
    assert "nowhere" in str(caught.value)
    assert "path" in caught.value.fix


def test_missing_masks_folder_names_option(tmp_path: Path) -> None:
    save_gray(tmp_path / "images" / "a.png", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(InvalidSourceError) as caught:
        read_image_folder(tmp_path, {"images": "images", "masks": "labels"})
    assert "labels" in str(caught.value)
    assert "'masks'" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"mask_formats": "palette"}, "mask_formats"),
        ({"mask_format": "rgb"}, "mask_format"),
        ({"missing_mask": "skip"}, "missing_mask"),
        ({"mask_values": [0, 300]}, "mask_values"),
        ({"mask_values": "0,1"}, "mask_values"),
        ({"extensions": "png"}, "extensions"),
        ({"extensions": ["png"]}, "extensions"),
        ({"volume_pattern": "("}, "volume_pattern"),
        ({"slice_pattern": r"\d+"}, "slice_pattern"),
        ({"images": "/abs/images"}, "images"),
        ({"masks": 3}, "masks"),
    ],
)
def test_invalid_options_rejected(tmp_path: Path, options: dict, key: str) -> None:
    save_gray(tmp_path / "a.png", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError) as caught:
        read_image_folder(tmp_path, options)
    assert not isinstance(caught.value, InvalidSourceError)
    assert key in str(caught.value)


def test_unknown_option_lists_allowed(tmp_path: Path) -> None:
    save_gray(tmp_path / "a.png", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError) as caught:
        read_image_folder(tmp_path, {"mask": "masks"})
    assert "'mask'" in str(caught.value)
    assert "mask_format" in str(caught.value)
