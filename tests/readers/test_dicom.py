"""Tests for the DICOM series reader."""

from __future__ import annotations

import logging
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    MPEG2MPML,
    generate_uid,
)

from lungct_kedro.readers import READERS, InvalidSourceError, SkippedFile
from lungct_kedro.readers import dicom as dicom_module
from lungct_kedro.readers.dicom import read_dicom

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SERIES_UID = "1.2.826.0.1.3680043.8.498.1001"


def write_slice(
    path: Path,
    stored: np.ndarray,
    *,
    z: float | None = 0.0,
    orientation: tuple[float, ...] | None = AXIAL,
    slope: float = 1.0,
    intercept: float = -1024.0,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    series_uid: str | None = SERIES_UID,
    instance_number: int | None = 1,
    slice_location: float | None = None,
    modality: str | None = "CT",
    padding_value: int | None = None,
    padding_limit: int | None = None,
    spacing: tuple[float, float] = (0.5, 0.5),
) -> Path:
    """Write a single-frame, uncompressed 16-bit DICOM slice (signed when ``stored`` is int16)."""
    stored = np.asarray(stored)
    signed = stored.dtype == np.int16
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if modality is not None:
        dataset.Modality = modality
    if series_uid is not None:
        dataset.SeriesInstanceUID = series_uid
    if z is not None:
        dataset.ImagePositionPatient = [0.0, 0.0, z]
    if orientation is not None:
        dataset.ImageOrientationPatient = list(orientation)
    if instance_number is not None:
        dataset.InstanceNumber = instance_number
    if slice_location is not None:
        dataset.SliceLocation = slice_location
    dataset.PixelSpacing = list(spacing)
    dataset.SliceThickness = 2.0
    dataset.Rows, dataset.Columns = stored.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = 16
    dataset.BitsStored = bits_stored
    dataset.HighBit = bits_stored - 1
    dataset.PixelRepresentation = 1 if signed else 0
    dataset.RescaleSlope = slope
    dataset.RescaleIntercept = intercept
    value_representation = "SS" if signed else "US"
    if padding_value is not None:
        dataset.add_new(0x00280120, value_representation, padding_value)
    if padding_limit is not None:
        dataset.add_new(0x00280121, value_representation, padding_limit)
    dataset.PixelData = stored.astype("<i2" if signed else "<u2").tobytes()

    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def write_dicomdir(path: Path) -> Path:
    """Write a minimal DICOMDIR-like file: valid DICOM, no image."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.FileSetID = "TESTSET"
    dataset.save_as(path, enforce_file_format=True)
    return path


def constant(value: int, shape: tuple[int, int] = (4, 4), dtype: type = np.uint16) -> np.ndarray:
    return np.full(shape, value, dtype=dtype)


# --- real sample -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classification_slices(shared_data_dir: Path) -> list:
    return list(read_dicom(shared_data_dir / "classification" / "dicom", {}))


@pytest.fixture(scope="module")
def classification_z(shared_data_dir: Path) -> dict[str, float]:
    """Map each file key to its ImagePositionPatient z, read independently of the reader."""
    root = shared_data_dir / "classification" / "dicom"
    positions = {}
    for file in root.rglob("*.dcm"):
        header = pydicom.dcmread(file, stop_before_pixels=True)
        positions[file.relative_to(root).as_posix()] = float(header.ImagePositionPatient[2])
    return positions


def test_classification_three_series(classification_slices: list) -> None:
    counts = Counter(item.volume_key for item in classification_slices)
    assert sorted(counts.values()) == [37, 39, 42]
    assert len({item.patient_key for item in classification_slices}) == 3


def test_classification_series_per_folder(classification_slices: list) -> None:
    by_folder = defaultdict(set)
    for item in classification_slices:
        by_folder[item.file_key.rsplit("/", 1)[0]].add(item.volume_key)
    assert sorted(by_folder) == ["CAP/cap001", "COVID-19/P001", "Normal/normal001"]
    assert all(len(keys) == 1 for keys in by_folder.values())


def test_classification_hu_plausible(classification_slices: list) -> None:
    for volume in {item.volume_key for item in classification_slices}:
        members = [item for item in classification_slices if item.volume_key == volume]
        low = min(float(item.pixels.min()) for item in members)
        high = max(float(item.pixels.max()) for item in members)
        assert -1024.0 <= low <= -1000.0
        assert high > 300.0
    assert all(item.is_hu for item in classification_slices)
    assert all(item.pixels.dtype == np.float32 for item in classification_slices)
    assert all(item.pixels.shape == (512, 512) for item in classification_slices)


def test_classification_geometry_and_no_tags(classification_slices: list) -> None:
    assert all(item.slice_thickness_mm == pytest.approx(2.0) for item in classification_slices)
    assert all(0.5 <= item.spacing_mm[0] <= 0.8 for item in classification_slices)
    assert all(item.spacing_mm[0] == item.spacing_mm[1] for item in classification_slices)
    assert all(item.labels == {} for item in classification_slices)
    assert all(item.mask is None for item in classification_slices)


def test_classification_z_decreases(classification_slices: list, classification_z: dict[str, float]) -> None:
    for volume in {item.volume_key for item in classification_slices}:
        members = [item for item in classification_slices if item.volume_key == volume]
        z_values = [classification_z[item.file_key] for item in members]
        assert all(earlier > later for earlier, later in zip(z_values, z_values[1:])), volume
        assert [item.slice_index for item in members] == list(range(len(members)))


def test_classification_order_matches_labels(classification_slices: list, shared_data_dir: Path) -> None:
    labels = pd.read_csv(shared_data_dir / "classification" / "labels.csv", dtype={"file": str, "patient_id": str})
    patient = labels[labels["patient_id"] == "P001"].sort_values("rank_superior_to_inferior")
    expected = [name.removeprefix("dicom/") for name in patient["file"]]
    found = [item.file_key for item in classification_slices if item.file_key.startswith("COVID-19/P001/")]
    assert len(found) == 37
    assert found == expected


def test_file_names_do_not_follow_order(classification_slices: list) -> None:
    """Guard: the sample's file names are out of slice order, so the order test above can fail."""
    found = [item.file_key for item in classification_slices if item.file_key.startswith("COVID-19/P001/")]
    assert found != sorted(found)


def test_signed_padding_sample(shared_data_dir: Path) -> None:
    folder = shared_data_dir / "formats" / "dicom_uncompressed"
    raw = pydicom.dcmread(folder / "lungmask_0.dcm").pixel_array
    assert raw.dtype == np.int16
    assert int(raw.min()) == -2048

    slices = list(read_dicom(folder, {}))
    assert [item.file_key for item in slices] == ["lungmask_1.dcm", "lungmask_0.dcm"]
    assert all(float(item.pixels.min()) == -1024.0 for item in slices)
    assert all(float(item.pixels.max()) == 1502.0 for item in slices)
    assert all(item.is_hu for item in slices)
    assert slices[0].spacing_mm == (0.625, 0.625)
    assert slices[0].slice_thickness_mm == 1.0
    assert slices[0].patient_key == "dicom_uncompressed"


def test_pydicom_ct_small(tmp_path: Path) -> None:
    source = Path(get_testdata_file("CT_small.dcm"))
    shutil.copy(source, tmp_path / "ct_small")
    (item,) = read_dicom(tmp_path, {})
    expected = np.maximum(pydicom.dcmread(source).pixel_array.astype(np.float32) - 1024.0, -1024.0)
    np.testing.assert_array_equal(item.pixels, expected)
    assert item.spacing_mm == pytest.approx((0.661468, 0.661468))
    assert item.file_key == "ct_small"


def test_jpeg2000_decodes(tmp_path: Path) -> None:
    shutil.copy(get_testdata_file("693_J2KI.dcm"), tmp_path / "j2k.dcm")
    (item,) = read_dicom(tmp_path, {})
    assert item.pixels.shape == (512, 512)
    assert float(item.pixels.min()) == -1024.0
    assert float(item.pixels.max()) > 300.0


def test_readers_registry_exports_dicom() -> None:
    assert READERS["dicom"] is read_dicom


# --- ordering ----------------------------------------------------------------------------------


def test_position_order_beats_names(tmp_path: Path) -> None:
    # File names and InstanceNumbers both put the inferior slice first.
    layout = [("a.dcm", -30.0, 1), ("b", 15.0, 4), ("c.dcm", 0.0, 3), ("d.dcm", 45.0, 2)]
    for name, z, instance in layout:
        write_slice(tmp_path / name, constant(1024 + int(z)), z=z, instance_number=instance)
    slices = list(read_dicom(tmp_path, {}))
    assert [item.file_key for item in slices] == ["d.dcm", "b", "c.dcm", "a.dcm"]
    assert [float(item.pixels[0, 0]) for item in slices] == [45.0, 15.0, 0.0, -30.0]
    assert [item.slice_index for item in slices] == [0, 1, 2, 3]


def test_feet_pointing_normal_still_superior_first(tmp_path: Path) -> None:
    flipped_rows = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # normal (0, 0, -1)
    for name, z in [("low.dcm", -5.0), ("high.dcm", 5.0), ("mid.dcm", 0.0)]:
        write_slice(tmp_path / name, constant(1024), z=z, orientation=flipped_rows)
    slices = list(read_dicom(tmp_path, {}))
    assert [item.file_key for item in slices] == ["high.dcm", "mid.dcm", "low.dcm"]


@pytest.mark.parametrize(
    ("orientation", "expected", "spacing"),
    [
        # Stored rows r, columns c: value 10 * r + c, shape (2, 3).
        (AXIAL, [[0, 1, 2], [10, 11, 12]], (0.5, 0.8)),
        ((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0), [[2, 1, 0], [12, 11, 10]], (0.5, 0.8)),
        ((1.0, 0.0, 0.0, 0.0, -1.0, 0.0), [[10, 11, 12], [0, 1, 2]], (0.5, 0.8)),
        ((0.0, 1.0, 0.0, 1.0, 0.0, 0.0), [[0, 10], [1, 11], [2, 12]], (0.8, 0.5)),
    ],
)
def test_axial_slices_in_display_orientation(
    tmp_path: Path, orientation: tuple[float, ...], expected: list, spacing: tuple[float, float]
) -> None:
    stored = np.array([[0, 1, 2], [10, 11, 12]], dtype=np.uint16) + 1024
    write_slice(tmp_path / "s.dcm", stored, orientation=orientation, spacing=(0.5, 0.8))
    (item,) = read_dicom(tmp_path, {})
    assert item.pixels.tolist() == expected
    assert item.spacing_mm == spacing


@pytest.mark.parametrize(
    ("fields", "expected_order", "log_text"),
    [
        ({"a.dcm": {"slice_location": -10.0}, "b.dcm": {"slice_location": 20.0}, "c.dcm": {"slice_location": 5.0}},
         ["b.dcm", "c.dcm", "a.dcm"], "SliceLocation"),
        ({"a.dcm": {"instance_number": 3}, "b.dcm": {"instance_number": 1}, "c.dcm": {"instance_number": 2}},
         ["b.dcm", "c.dcm", "a.dcm"], "InstanceNumber"),
    ],
)
def test_fallback_order_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fields: dict, expected_order: list, log_text: str
) -> None:
    for name, extra in fields.items():
        settings = {"z": None, "instance_number": None, **extra}
        write_slice(tmp_path / name, constant(1024), **settings)
    with caplog.at_level(logging.WARNING, logger="lungct_kedro.readers.dicom"):
        slices = list(read_dicom(tmp_path, {}))
    assert [item.file_key for item in slices] == expected_order
    assert any(log_text in record.getMessage() for record in caplog.records)


def test_mixed_orientation_series_rejected(tmp_path: Path) -> None:
    write_slice(tmp_path / "axial.dcm", constant(1024), z=0.0)
    write_slice(tmp_path / "scout.dcm", constant(1024), z=1.0, orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    with pytest.raises(InvalidSourceError) as caught:
        list(read_dicom(tmp_path, {}))
    assert "orientation" in str(caught.value)

    skipped: list[SkippedFile] = []
    assert list(read_dicom(tmp_path, {}, skipped)) == []
    assert sorted(Path(entry.path).name for entry in skipped) == ["axial.dcm", "scout.dcm"]


def test_series_grouped_by_uid_then_folder(tmp_path: Path) -> None:
    write_slice(tmp_path / "mixed" / "1.dcm", constant(1024), series_uid="1.2.3.1", z=0.0)
    write_slice(tmp_path / "mixed" / "2.dcm", constant(1024), series_uid="1.2.3.2", z=0.0)
    write_slice(tmp_path / "mixed" / "3.dcm", constant(1024), series_uid="1.2.3.1", z=1.0)
    write_slice(tmp_path / "no_uid" / "1.dcm", constant(1024), series_uid=None, z=0.0)
    write_slice(tmp_path / "no_uid" / "2.dcm", constant(1024), series_uid=None, z=1.0)
    slices = list(read_dicom(tmp_path, {}))
    groups = defaultdict(list)
    for item in slices:
        groups[item.volume_key].append(item.file_key)
    assert groups == {
        "1.2.3.1": ["mixed/3.dcm", "mixed/1.dcm"],
        "1.2.3.2": ["mixed/2.dcm"],
        "no_uid": ["no_uid/2.dcm", "no_uid/1.dcm"],
    }


def test_min_slices_leaves_out_short_series(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for z in (0.0, 1.0, 2.0):
        write_slice(tmp_path / "long" / f"{int(z)}.dcm", constant(1024), series_uid="1.2.3.10", z=z)
    for z in (0.0, 1.0):
        write_slice(tmp_path / "short" / f"{int(z)}.dcm", constant(1024), series_uid="1.2.3.20", z=z)
    skipped: list[SkippedFile] = []
    with caplog.at_level(logging.WARNING, logger="lungct_kedro.readers.dicom"):
        slices = list(read_dicom(tmp_path, {"min_slices": 3}, skipped))
    assert {item.volume_key for item in slices} == {"1.2.3.10"}
    assert len(skipped) == 2
    assert any("min_slices" in record.getMessage() for record in caplog.records)


# --- HU conversion -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slope", "intercept", "stored", "expected_hu"),
    [
        (1.0, -1024.0, [1024, 1124, 0], [0.0, 100.0, -1024.0]),
        (2.0, -2048.0, [1024, 1074, 1524], [0.0, 100.0, 1000.0]),
        (0.5, -1000.0, [2000, 2400, 0], [0.0, 200.0, -1000.0]),
        (1.0, -2048.0, [0, 1024, 2048], [-1024.0, -1024.0, 0.0]),
    ],
)
def test_rescale_per_slice(tmp_path: Path, slope: float, intercept: float, stored: list, expected_hu: list) -> None:
    # A neighbour slice with other rescale values checks that each slice uses its own.
    write_slice(tmp_path / "other.dcm", constant(1000), z=10.0, slope=3.0, intercept=-10.0)
    write_slice(tmp_path / "s.dcm", np.array([stored], dtype=np.uint16), z=0.0, slope=slope, intercept=intercept)
    other, item = read_dicom(tmp_path, {})
    assert item.pixels.tolist() == [expected_hu]
    assert float(other.pixels[0, 0]) == 2990.0


@pytest.mark.parametrize(
    ("mode", "expected_hu"),
    [
        ("as_stored", [-1024.0, -24.0, 3071.0]),
        ("invert", [3071.0, 2071.0, -1024.0]),
    ],
)
def test_monochrome1_modes(tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, expected_hu: list) -> None:
    stored = np.array([[0, 1000, 4095]], dtype=np.uint16)
    write_slice(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", bits_stored=12)
    with caplog.at_level(logging.INFO, logger="lungct_kedro.readers.dicom"):
        (item,) = read_dicom(tmp_path, {"monochrome1": mode})
    assert item.pixels.tolist() == [expected_hu]
    inversion_logs = [r for r in caplog.records if "MONOCHROME1" in r.getMessage()]
    assert len(inversion_logs) == (1 if mode == "invert" else 0)
    assert all(r.levelno == logging.INFO for r in inversion_logs)


@pytest.mark.parametrize("bits_stored", [16, 12])
def test_signed_pixels_keep_sign(tmp_path: Path, bits_stored: int) -> None:
    stored = np.array([[-1000, -1, 0, 700]], dtype=np.int16)
    write_slice(tmp_path / "s.dcm", stored, intercept=0.0, bits_stored=bits_stored)
    (item,) = read_dicom(tmp_path, {})
    assert item.pixels.tolist() == [[-1000.0, -1.0, 0.0, 700.0]]


@pytest.mark.parametrize(
    ("stored", "intercept", "padding_value", "padding_limit", "expected_hu"),
    [
        (np.array([[-2000, -1000, 40]], dtype=np.int16), 0.0, -2000, None, [-1024.0, -1000.0, 40.0]),
        (np.array([[0, 5, 10, 11, 1024]], dtype=np.uint16), -1024.0, 0, 10, [-1024.0, -1024.0, -1024.0, -1013.0, 0.0]),
        (np.array([[0, 5, 10, 11]], dtype=np.uint16), -1024.0, 10, 0, [-1024.0, -1024.0, -1024.0, -1013.0]),
        (np.array([[30, 31, 1024]], dtype=np.uint16), -1000.0, 30, None, [-1024.0, -969.0, 24.0]),
    ],
)
def test_padding_becomes_air(
    tmp_path: Path,
    stored: np.ndarray,
    intercept: float,
    padding_value: int,
    padding_limit: int | None,
    expected_hu: list,
) -> None:
    write_slice(
        tmp_path / "p.dcm", stored, intercept=intercept, padding_value=padding_value, padding_limit=padding_limit
    )
    (item,) = read_dicom(tmp_path, {})
    assert item.pixels.tolist() == [expected_hu]


def test_non_ct_rejected_by_default(tmp_path: Path) -> None:
    write_slice(tmp_path / "ct" / "1.dcm", constant(1024), series_uid="1.2.3.30")
    write_slice(tmp_path / "mr" / "1.dcm", constant(100), series_uid="1.2.3.40", modality="MR")
    with pytest.raises(InvalidSourceError) as caught:
        list(read_dicom(tmp_path, {}))
    assert "MR" in str(caught.value)
    assert "allow_non_ct" in str(caught.value)
    assert "mr" in str(caught.value)

    skipped: list[SkippedFile] = []
    slices = list(read_dicom(tmp_path, {}, skipped))
    assert [item.file_key for item in slices] == ["ct/1.dcm"]
    assert [Path(entry.path).parent.name for entry in skipped] == ["mr"]


def test_non_ct_allowed_as_intensities(tmp_path: Path) -> None:
    write_slice(tmp_path / "1.dcm", np.array([[0, 4095]], dtype=np.uint16), modality="MR", bits_stored=12)
    (item,) = read_dicom(tmp_path, {"allow_non_ct": True})
    assert item.is_hu is False
    np.testing.assert_allclose(item.pixels, [[0.0, 1.0]])


# --- invalid files -----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
@pytest.mark.parametrize(
    ("sample", "cut"),
    [
        ("formats/dicom_uncompressed", 100),
        ("formats/dicom_uncompressed", 300),
        ("formats/dicom_uncompressed", 0.5),
        ("formats/dicom_uncompressed", -10),
        ("classification/dicom/COVID-19/P001", 1000),
        ("classification/dicom/COVID-19/P001", 0.5),
        ("classification/dicom/COVID-19/P001", -10),
    ],
)
def test_truncated_dicom(tmp_path: Path, shared_data_dir: Path, sample: str, cut: float) -> None:
    sources = sorted((shared_data_dir / sample).glob("*.dcm"))[:3]
    for source in sources:
        shutil.copy(source, tmp_path / source.name)
    broken = tmp_path / sources[-1].name
    data = broken.read_bytes()
    end = int(len(data) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(data) + cut)
    broken.write_bytes(data[:end])

    with pytest.raises(InvalidSourceError) as caught:
        list(read_dicom(tmp_path, {}))
    assert broken.name in str(caught.value)
    assert "skip_invalid" in str(caught.value)

    skipped: list[SkippedFile] = []
    slices = list(read_dicom(tmp_path, {}, skipped))
    assert len(slices) == len(sources) - 1
    assert broken.name not in {item.file_key for item in slices}
    assert [Path(entry.path).name for entry in skipped] == [broken.name]


def test_non_dicom_files_ignored(tmp_path: Path) -> None:
    write_slice(tmp_path / "series" / "IM0001", constant(1024))
    write_dicomdir(tmp_path / "DICOMDIR")
    (tmp_path / "README.txt").write_text("exported by a viewer")
    (tmp_path / "series" / "notes").write_bytes(b"\x00\x01 not dicom")
    skipped: list[SkippedFile] = []
    slices = list(read_dicom(tmp_path, {}, skipped))
    assert [item.file_key for item in slices] == ["series/IM0001"]
    assert skipped == []


def test_dcm_suffix_text_is_invalid(tmp_path: Path) -> None:
    write_slice(tmp_path / "good.dcm", constant(1024))
    (tmp_path / "broken.dcm").write_text("this is not a DICOM file")
    with pytest.raises(InvalidSourceError) as caught:
        read_dicom(tmp_path, {})
    assert "broken.dcm" in str(caught.value)

    skipped: list[SkippedFile] = []
    assert [item.file_key for item in read_dicom(tmp_path, {}, skipped)] == ["good.dcm"]
    assert [Path(entry.path).name for entry in skipped] == ["broken.dcm"]


def test_unsupported_transfer_syntax_names_fix(tmp_path: Path) -> None:
    path = write_slice(tmp_path / "video.dcm", constant(1024))
    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = MPEG2MPML
    dataset.PixelData = encapsulate([b"\x00" * 16])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)

    with pytest.raises(InvalidSourceError) as caught:
        list(read_dicom(tmp_path, {}, []))
    message = str(caught.value)
    assert "video.dcm" in message
    assert "MPEG2" in message
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in message


def test_missing_jpeg_plugin_names_fix(tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = sorted((shared_data_dir / "classification/dicom/COVID-19/P001").glob("*.dcm"))[0]
    shutil.copy(source, tmp_path / source.name)
    monkeypatch.setattr(dicom_module, "get_decoder", lambda uid: SimpleNamespace(is_available=False))
    with pytest.raises(InvalidSourceError) as caught:
        list(read_dicom(tmp_path, {}, []))
    assert "JPEG Lossless" in str(caught.value)
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in str(caught.value)


@pytest.mark.parametrize("skipped", [None, []])
def test_empty_folder_raises(tmp_path: Path, skipped: list | None) -> None:
    with pytest.raises(InvalidSourceError) as caught:
        read_dicom(tmp_path, {}, skipped)
    assert str(tmp_path) in str(caught.value)
    assert "empty" in str(caught.value)


@pytest.mark.parametrize("skipped", [None, []])
def test_folder_without_dicom_raises(tmp_path: Path, skipped: list | None) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    write_dicomdir(tmp_path / "DICOMDIR")
    with pytest.raises(InvalidSourceError) as caught:
        read_dicom(tmp_path, {}, skipped)
    assert "no DICOM image files" in str(caught.value)


@pytest.mark.parametrize("skipped", [None, []])
def test_missing_path_raises(tmp_path: Path, skipped: list | None) -> None:
    with pytest.raises(InvalidSourceError) as caught:
        read_dicom(tmp_path / "absent", {}, skipped)
    assert "absent" in str(caught.value)
    assert "path" in caught.value.fix


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"allow_non_CT": True}, "allow_non_CT"),
        ({"allow_non_ct": "yes"}, "allow_non_ct"),
        ({"min_slices": 0}, "min_slices"),
        ({"min_slices": True}, "min_slices"),
        ({"monochrome1": "flip"}, "monochrome1"),
    ],
)
def test_invalid_options_rejected(tmp_path: Path, options: dict, key: str) -> None:
    write_slice(tmp_path / "s.dcm", constant(1024))
    with pytest.raises(ValueError) as caught:
        read_dicom(tmp_path, options)
    assert not isinstance(caught.value, InvalidSourceError)
    assert key in str(caught.value)
