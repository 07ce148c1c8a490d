"""Tests for the NIfTI volume reader."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, ornt_transform

from lungct_kedro.readers import READERS, InvalidSourceError, SkippedFile
from lungct_kedro.readers.nifti import read_nifti

SAMPLE = Path("formats") / "nifti" / "chest_ct_cropped.nii.gz"
RAS_AFFINE = np.array(
    [
        [1.5, 0.0, 0.0, -30.0],
        [0.0, 0.8, 0.0, -40.0],
        [0.0, 0.0, 2.0, 10.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def save_volume(path: Path, data: np.ndarray, affine: np.ndarray = RAS_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def reoriented(data: np.ndarray, affine: np.ndarray, axcodes: str) -> nib.Nifti1Image:
    """Store a RAS+ volume with another axis order and direction but the same world positions."""
    image = nib.Nifti1Image(data, affine)
    return image.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(axcodes))))


def ct_like(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Return int16 HU-like values: air, soft tissue and bone."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([-1000, -800, 40, 60, 700], dtype=np.int16), size=shape)


# --- real sample -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_slices(shared_data_dir: Path) -> list:
    return list(read_nifti(shared_data_dir / SAMPLE, {}))


def test_sample_slice_count_and_shape(sample_slices: list) -> None:
    assert len(sample_slices) == 112
    assert all(item.pixels.shape == (102, 122) for item in sample_slices)
    assert [item.slice_index for item in sample_slices] == list(range(112))
    assert all(item.pixels.dtype == np.float32 for item in sample_slices)


def test_sample_keys_and_geometry(sample_slices: list) -> None:
    first = sample_slices[0]
    assert first.file_key == "chest_ct_cropped.nii.gz"
    assert first.volume_key == "chest_ct_cropped"
    assert first.spacing_mm == (1.5, 1.5)
    assert first.slice_thickness_mm == 1.5
    assert first.is_hu
    assert first.mask is None


def test_sample_stored_lps_as_expected(shared_data_dir: Path) -> None:
    image = nib.load(shared_data_dir / SAMPLE)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert image.shape == (122, 102, 112)


def test_sample_slices_match_lps_layout(sample_slices: list, shared_data_dir: Path) -> None:
    # Stored L-P-S: index 0 grows toward the left, index 1 toward posterior, index 2
    # toward superior. Display rows run anterior to posterior and columns right to left,
    # which is the stored (x, y) plane transposed, with the last stored slice first.
    raw = np.asanyarray(nib.load(shared_data_dir / SAMPLE).dataobj).astype(np.float32)
    depth = raw.shape[2]
    for item in sample_slices:
        expected = np.maximum(raw[:, :, depth - 1 - item.slice_index].T, -1024.0)
        np.testing.assert_array_equal(item.pixels, expected, err_msg=f"slice {item.slice_index}")


def test_sample_hu_plausible(sample_slices: list) -> None:
    values = np.concatenate([item.pixels.ravel() for item in sample_slices])
    assert float(values.min()) == -1024.0
    assert float(values.max()) > 300.0
    assert float(np.percentile(values, 1)) < -500.0


def test_sample_no_hu_warning(shared_data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lungct_kedro.readers.nifti"):
        next(iter(read_nifti(shared_data_dir / SAMPLE, {})))
    assert caplog.records == []


def test_readers_registry_exports_nifti() -> None:
    assert READERS["nifti"] is read_nifti


# --- orientation and scaling -------------------------------------------------------------------


def test_marker_voxels_in_display_position(tmp_path: Path) -> None:
    data = np.zeros((4, 5, 6), dtype=np.int16)
    data[3, 4, 5] = 100  # patient's right-most, anterior-most, superior-most voxel
    data[0, 0, 0] = 200  # left-most, posterior-most, inferior-most
    data[3, 0, 5] = 300  # right, posterior, superior
    save_volume(tmp_path / "marks.nii.gz", data, np.eye(4))
    slices = list(read_nifti(tmp_path / "marks.nii.gz", {"is_hu": True}))
    assert slices[0].pixels.shape == (5, 4)
    assert slices[0].pixels[0, 0] == 100.0
    assert slices[0].pixels[4, 0] == 300.0
    assert slices[-1].pixels[4, 3] == 200.0


@pytest.mark.parametrize("axcodes", ["LPS", "LAS", "RPI", "SRA", "ALS"])
def test_orientations_give_same_slices(tmp_path: Path, axcodes: str) -> None:
    data = ct_like((6, 5, 4))
    save_volume(tmp_path / "ras" / "v.nii.gz", data)
    other = reoriented(data, RAS_AFFINE, axcodes)
    assert "".join(nib.aff2axcodes(other.affine)) == axcodes
    (tmp_path / "other").mkdir()
    nib.save(other, tmp_path / "other" / "v.nii.gz")

    reference = list(read_nifti(tmp_path / "ras", {}))
    found = list(read_nifti(tmp_path / "other", {}))
    assert len(found) == len(reference) == 4
    for expected, item in zip(reference, found, strict=True):
        np.testing.assert_array_equal(item.pixels, expected.pixels)
        assert item.spacing_mm == pytest.approx(expected.spacing_mm)
        assert item.slice_thickness_mm == pytest.approx(expected.slice_thickness_mm)
    assert reference[0].spacing_mm == (0.8, 1.5)
    assert reference[0].slice_thickness_mm == 2.0


def test_scl_slope_applied_once(tmp_path: Path) -> None:
    stored = np.arange(-400, 500, 25, dtype=np.int16).reshape(2, 3, 6)
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_data_dtype(np.int16)
    image.header.set_slope_inter(2.0, 0.0)
    nib.save(image, tmp_path / "scaled.nii")
    on_disk = nib.load(tmp_path / "scaled.nii")
    assert on_disk.dataobj.slope == 2.0
    np.testing.assert_array_equal(np.asarray(on_disk.dataobj.get_unscaled()), stored)

    slices = list(read_nifti(tmp_path / "scaled.nii", {}))
    expected_top = (2.0 * stored[::-1, ::-1, 5].T).astype(np.float32)
    np.testing.assert_array_equal(slices[0].pixels, expected_top)
    assert float(max(item.pixels.max() for item in slices)) == 2.0 * 475


def test_scl_inter_applied_once(tmp_path: Path) -> None:
    stored = np.full((2, 2, 2), 100, dtype=np.int16)
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_data_dtype(np.int16)
    image.header.set_slope_inter(1.5, -1024.0)
    nib.save(image, tmp_path / "scaled.nii.gz")
    slices = list(read_nifti(tmp_path / "scaled.nii.gz", {}))
    assert {float(value) for item in slices for value in item.pixels.ravel()} == {-874.0}


def test_values_below_air_clamped(tmp_path: Path) -> None:
    data = np.array([-3024, -2048, -1024, -900, 400], dtype=np.int16).reshape(5, 1, 1)
    save_volume(tmp_path / "pad.nii.gz", data, np.eye(4))
    (item,) = read_nifti(tmp_path / "pad.nii.gz", {})
    assert sorted(item.pixels.ravel().tolist()) == [-1024.0, -1024.0, -1024.0, -900.0, 400.0]


@pytest.mark.parametrize(
    "values",
    [
        np.linspace(0.0, 1.0, 60, dtype=np.float32),
        np.linspace(0.0, 4000.0, 60, dtype=np.float32),
        np.linspace(-1000.0, 50.0, 60, dtype=np.float32),
    ],
)
def test_non_hu_volume_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture, values: np.ndarray) -> None:
    save_volume(tmp_path / "odd.nii.gz", values.reshape(3, 4, 5), np.eye(4))
    with caplog.at_level(logging.WARNING, logger="lungct_kedro.readers.nifti"):
        slices = list(read_nifti(tmp_path / "odd.nii.gz", {}))
    assert len(slices) == 5
    assert all(item.is_hu for item in slices)
    assert any("odd.nii.gz" in record.getMessage() for record in caplog.records)
    assert any("Hounsfield" in record.getMessage() for record in caplog.records)


def test_is_hu_false_scales_to_unit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    values = np.linspace(10.0, 20.0, 60, dtype=np.float32).reshape(3, 4, 5)
    save_volume(tmp_path / "mr.nii.gz", values, np.eye(4))
    with caplog.at_level(logging.WARNING, logger="lungct_kedro.readers.nifti"):
        slices = list(read_nifti(tmp_path / "mr.nii.gz", {"is_hu": False}))
    all_values = np.concatenate([item.pixels.ravel() for item in slices])
    assert all(not item.is_hu for item in slices)
    assert float(all_values.min()) == 0.0
    assert float(all_values.max()) == pytest.approx(1.0)
    assert caplog.records == []


# --- masks -------------------------------------------------------------------------------------


def test_mask_folder_pairs_by_name(tmp_path: Path) -> None:
    data = ct_like((6, 5, 4))
    mask = np.zeros((6, 5, 4), dtype=np.uint8)
    mask[5, 4, 3] = 2
    mask[0, 0, 0] = 1
    save_volume(tmp_path / "images" / "case.nii.gz", data)
    save_volume(tmp_path / "images" / "labels" / "case.nii.gz", mask)
    slices = list(read_nifti(tmp_path / "images", {"masks": "labels"}))
    assert len(slices) == 4
    assert slices[0].mask.dtype == np.uint8
    assert slices[0].mask[0, 0] == 2
    assert slices[-1].mask[4, 5] == 1
    assert int(sum(item.mask.sum() for item in slices)) == 3


def test_mask_suffix_pairs_and_excludes(tmp_path: Path) -> None:
    save_volume(tmp_path / "case1.nii.gz", ct_like((3, 3, 2)))
    save_volume(tmp_path / "case1_seg.nii.gz", np.ones((3, 3, 2), dtype=np.uint8))
    save_volume(tmp_path / "case2.nii", ct_like((3, 3, 2), seed=1))
    save_volume(tmp_path / "case2_seg.nii.gz", np.zeros((3, 3, 2), dtype=np.uint8))
    slices = list(read_nifti(tmp_path, {"mask_suffix": "_seg"}))
    assert [item.file_key for item in slices] == ["case1.nii.gz"] * 2 + ["case2.nii"] * 2
    assert [int(item.mask.max()) for item in slices] == [1, 1, 0, 0]


def test_single_mask_file(tmp_path: Path) -> None:
    save_volume(tmp_path / "ct.nii.gz", ct_like((3, 3, 2)))
    save_volume(tmp_path / "seg.nii.gz", np.full((3, 3, 2), 1, dtype=np.uint8))
    slices = list(read_nifti(tmp_path / "ct.nii.gz", {"masks": "seg.nii.gz"}))
    assert all(item.mask.min() == 1 for item in slices)


def test_mask_with_other_orientation_aligned(tmp_path: Path) -> None:
    data = ct_like((6, 5, 4))
    mask = np.zeros((6, 5, 4), dtype=np.uint8)
    mask[5, 4, 3] = 1
    save_volume(tmp_path / "img" / "v.nii.gz", data)
    (tmp_path / "msk").mkdir()
    nib.save(reoriented(mask, RAS_AFFINE, "LPS"), tmp_path / "msk" / "v.nii.gz")
    slices = list(read_nifti(tmp_path / "img", {"masks": str(tmp_path / "msk")}))
    assert slices[0].mask[0, 0] == 1
    assert int(sum(item.mask.sum() for item in slices)) == 1


def test_float_mask_with_integer_values(tmp_path: Path) -> None:
    save_volume(tmp_path / "ct.nii.gz", ct_like((3, 3, 2)))
    save_volume(tmp_path / "m" / "ct.nii.gz", np.full((3, 3, 2), 2.0, dtype=np.float32))
    slices = list(read_nifti(tmp_path / "ct.nii.gz", {"masks": "m"}))
    assert all(item.mask.dtype == np.uint8 for item in slices)
    assert all(int(item.mask.max()) == 2 for item in slices)


def test_fractional_mask_rejected(tmp_path: Path) -> None:
    save_volume(tmp_path / "ct.nii.gz", ct_like((3, 3, 2)))
    save_volume(tmp_path / "m" / "ct.nii.gz", np.full((3, 3, 2), 0.5, dtype=np.float32))
    with pytest.raises(InvalidSourceError) as caught:
        list(read_nifti(tmp_path / "ct.nii.gz", {"masks": "m"}))
    assert "non-integer" in str(caught.value)


def test_mask_shape_mismatch_names_both(tmp_path: Path) -> None:
    save_volume(tmp_path / "a.nii.gz", ct_like((4, 4, 3)))
    save_volume(tmp_path / "b.nii.gz", ct_like((4, 4, 3)))
    save_volume(tmp_path / "masks" / "a.nii.gz", np.zeros((4, 4, 3), dtype=np.uint8))
    save_volume(tmp_path / "masks" / "b.nii.gz", np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(InvalidSourceError) as caught:
        list(read_nifti(tmp_path, {"masks": "masks"}))
    message = str(caught.value).replace("\\", "/")
    assert "b.nii.gz" in message
    assert "masks/b.nii.gz" in message
    assert "(4, 4, 3)" in message
    assert "(4, 4, 2)" in message

    skipped: list[SkippedFile] = []
    slices = list(read_nifti(tmp_path, {"masks": "masks"}, skipped))
    assert {item.file_key for item in slices} == {"a.nii.gz"}
    assert [Path(entry.path).name for entry in skipped] == ["b.nii.gz"]


def test_mask_value_outside_allowed(tmp_path: Path) -> None:
    save_volume(tmp_path / "a.nii.gz", ct_like((3, 3, 2)))
    bad = np.zeros((3, 3, 2), dtype=np.uint8)
    bad[1, 1, 1] = 7
    save_volume(tmp_path / "masks" / "a.nii.gz", bad)
    with pytest.raises(InvalidSourceError) as caught:
        list(read_nifti(tmp_path, {"masks": "masks"}))
    assert "a.nii.gz" in str(caught.value)
    assert "[7]" in str(caught.value)
    assert "mask_values" in str(caught.value)
    assert len(list(read_nifti(tmp_path, {"masks": "masks", "mask_values": [0, 7]}))) == 2


@pytest.mark.parametrize(("missing_mask", "raises"), [("error", True), ("none", False)])
def test_missing_mask_file(tmp_path: Path, missing_mask: str, raises: bool) -> None:
    save_volume(tmp_path / "a.nii.gz", ct_like((3, 3, 2)))
    (tmp_path / "masks").mkdir()
    options = {"masks": "masks", "missing_mask": missing_mask}
    if raises:
        with pytest.raises(InvalidSourceError) as caught:
            list(read_nifti(tmp_path, options))
        assert "a.nii.gz" in str(caught.value)
        assert "missing_mask" in str(caught.value)
    else:
        slices = list(read_nifti(tmp_path, options))
        assert all(item.mask is None for item in slices)


# --- invalid inputs ----------------------------------------------------------------------------


def test_truncated_volume(tmp_path: Path) -> None:
    save_volume(tmp_path / "a.nii.gz", ct_like((20, 20, 10)))
    broken = save_volume(tmp_path / "b.nii.gz", ct_like((20, 20, 10), seed=3))
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidSourceError) as caught:
        list(read_nifti(tmp_path, {}))
    assert "b.nii.gz" in str(caught.value)

    skipped: list[SkippedFile] = []
    slices = list(read_nifti(tmp_path, {}, skipped))
    assert {item.file_key for item in slices} == {"a.nii.gz"}
    assert [Path(entry.path).name for entry in skipped] == ["b.nii.gz"]


def test_four_dimensional_volume(tmp_path: Path) -> None:
    save_volume(tmp_path / "single.nii.gz", ct_like((3, 3, 2)).reshape(3, 3, 2, 1))
    assert len(list(read_nifti(tmp_path / "single.nii.gz", {}))) == 2
    save_volume(tmp_path / "series.nii.gz", np.stack([ct_like((3, 3, 2))] * 2, axis=-1))
    with pytest.raises(InvalidSourceError) as caught:
        list(read_nifti(tmp_path / "series.nii.gz", {}))
    assert "(3, 3, 2, 2)" in str(caught.value)


@pytest.mark.parametrize("skipped", [None, []])
def test_empty_folder_raises(tmp_path: Path, skipped: list | None) -> None:
    (tmp_path / "readme.txt").write_text("no volumes")
    with pytest.raises(InvalidSourceError) as caught:
        read_nifti(tmp_path, {}, skipped)
    assert str(tmp_path) in str(caught.value)


@pytest.mark.parametrize("skipped", [None, []])
def test_missing_path_raises(tmp_path: Path, skipped: list | None) -> None:
    with pytest.raises(InvalidSourceError) as caught:
        read_nifti(tmp_path / "gone.nii.gz", {}, skipped)
    assert "gone.nii.gz" in str(caught.value)


def test_non_nifti_file_raises(tmp_path: Path) -> None:
    (tmp_path / "scan.mha").write_bytes(b"ObjectType = Image")
    with pytest.raises(InvalidSourceError) as caught:
        read_nifti(tmp_path / "scan.mha", {})
    assert "scan.mha" in str(caught.value)


def test_missing_masks_folder_raises(tmp_path: Path) -> None:
    save_volume(tmp_path / "a.nii.gz", ct_like((3, 3, 2)))
    with pytest.raises(InvalidSourceError) as caught:
        read_nifti(tmp_path, {"masks": "labels"})
    assert "labels" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"mask": "m"}, "mask"),
        ({"masks": "m", "mask_suffix": "_seg"}, "mask_suffix"),
        ({"mask_suffix": ""}, "mask_suffix"),
        ({"mask_values": [0, -1]}, "mask_values"),
        ({"missing_mask": "empty"}, "missing_mask"),
        ({"is_hu": "no"}, "is_hu"),
    ],
)
def test_invalid_options_rejected(tmp_path: Path, options: dict, key: str) -> None:
    save_volume(tmp_path / "a.nii.gz", ct_like((3, 3, 2)))
    with pytest.raises(ValueError) as caught:
        read_nifti(tmp_path, options)
    assert not isinstance(caught.value, InvalidSourceError)
    assert key in str(caught.value)
