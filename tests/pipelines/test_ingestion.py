"""Tests of the ingestion node: harmonisation, pseudonyms, label joins and bad input.

Inputs are small PNG folders and NIfTI volumes written to a temporary folder,
plus the DICOM series of the real sample. The readers have their own tests in
``tests/readers``, so these tests check what ``harmonise_sources`` does with
the slices the readers return.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from lungct_kedro.datasets.sources import parse_sources
from lungct_kedro.pipelines.ingestion.nodes import MANIFEST_COLUMNS, harmonise_sources
from lungct_kedro.readers import READERS, InvalidSourceError, RawSlice
from tests.conftest import REPO_ROOT

SIZE = 64
PARAMS = {
    "image_size": SIZE,
    "window_level_hu": -600,
    "window_width_hu": 1500,
    "mask_values": [0, 1, 2],
}
AIR_HU = -1024
# A lung window of level -600 HU and width 1500 HU maps -1350 HU to 0 and 150 HU to 1.
AIR_WINDOWED = (AIR_HU + 1350) / 1500
FLOAT16_TOLERANCE = 1e-3
PAIR_OPTIONS = {"images": "images", "masks": "masks", "mask_format": "index"}
# A file stem such as case007_2 gives volume and patient key case007 and slice index 2.
CASE_OPTIONS = {
    "images": "images",
    "volume_pattern": r"^(case\d+)_\d+$",
    "patient_pattern": r"^(case\d+)_\d+$",
    "slice_pattern": r"_(\d+)$",
}


# --- input builders ----------------------------------------------------------------------------


def save_png(path: Path, values: np.ndarray) -> Path:
    """Write an 8-bit grayscale PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint8)).save(path)
    return path


def save_corrupt_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)
    return path


def save_nifti(path: Path, volume: np.ndarray) -> Path:
    """Write a float32 volume with an identity (RAS+) affine, so axes are (x, y, z) in mm."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(volume, dtype=np.float32), np.eye(4)), path)
    return path


def uniform_hu_volume(hu: float, n_slices: int = 1) -> np.ndarray:
    """Return a volume whose axial slices are 32 rows by 48 columns in display order."""
    return np.full((48, 32, n_slices), hu, dtype=np.float32)


def folder_entry(root: Path, name: str = "scans", options: dict | None = None, **extra) -> dict:
    return {
        "name": name,
        "kind": "image_folder",
        "path": str(root),
        "options": dict(PAIR_OPTIONS if options is None else options),
        **extra,
    }


def label_entry(csv_path: Path, **extra) -> dict:
    return {"path": str(csv_path), "join_on": "file", "key_column": "file", **extra}


def make_plain_folder(root: Path, levels: list[int], shape: tuple[int, int] = (20, 24)) -> Path:
    """Write images/<n>.png with uniform gray ``levels[n]`` and no masks."""
    for number, level in enumerate(levels):
        save_png(root / "images" / f"{number}.png", np.full(shape, level))
    return root


def make_case_folder(root: Path, slices: dict[str, int], shape: tuple[int, int] = (20, 24)) -> Path:
    """Write images/<stem>.png for each stem, filled with its gray level."""
    for stem, level in slices.items():
        save_png(root / "images" / f"{stem}.png", np.full(shape, level))
    return root


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def ingest(entries: list[dict], **params):
    """Parse ``entries`` as catalog sources and run the ingestion node on them."""
    secret = params.pop("pseudonym_secret", "test-secret")
    sources = parse_sources(entries, pseudonym_secret=secret)
    manifest, summary, store = harmonise_sources(sources, {}, {**PARAMS, **params})
    return store, manifest, summary


# --- harmonisation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "padded_pixels", "content_pixels"),
    [
        # Wider than tall: rows are added above and below.
        (20, 40, [(0, 32), (63, 32)], [(32, 0), (32, 63), (32, 32)]),
        # Taller than wide and larger than the store: columns are added, then it shrinks.
        (100, 70, [(32, 0), (32, 63)], [(0, 32), (63, 32), (32, 32)]),
        # Already square: nothing is padded.
        (64, 64, [], [(0, 0), (63, 63), (32, 32)]),
    ],
    ids=["wide", "tall", "square"],
)
def test_image_padded_then_resized(tmp_path, height, width, padded_pixels, content_pixels):
    level = 200
    save_png(tmp_path / "scans" / "images" / "0.png", np.full((height, width), level))

    store, manifest, _ = ingest([folder_entry(tmp_path / "scans", options={"images": "images"})])

    image = store.arrays["image"][0]
    assert image.shape == (SIZE, SIZE)
    assert manifest.loc[0, "original_height"] == height
    assert manifest.loc[0, "original_width"] == width
    for row, column in padded_pixels:
        assert image[row, column] == pytest.approx(0.0, abs=FLOAT16_TOLERANCE), (row, column)
    for row, column in content_pixels:
        assert image[row, column] == pytest.approx(level / 255, abs=FLOAT16_TOLERANCE), (row, column)


@pytest.mark.parametrize(
    ("level_hu", "width_hu", "hu", "expected"),
    [
        (-600, 1500, -600, 0.5),
        (-600, 1500, -300, 0.7),
        (-600, 1500, -900, 0.3),
        (-600, 1500, AIR_HU, AIR_WINDOWED),
        (-600, 1500, 150, 1.0),
        (-600, 1500, 400, 1.0),
        (-500, 1000, -500, 0.5),
        (-500, 1000, -1000, 0.0),
    ],
)
def test_hu_window_maps_known_values(tmp_path, level_hu, width_hu, hu, expected):
    volume = save_nifti(tmp_path / "ct.nii.gz", uniform_hu_volume(hu))
    entries = [{"name": "ct", "kind": "nifti", "path": str(volume)}]

    store, manifest, _ = ingest(entries, window_level_hu=level_hu, window_width_hu=width_hu)

    assert bool(manifest.loc[0, "has_hu"]) is True
    assert store.arrays["hu"][0, 32, 32] == hu
    assert float(store.arrays["image"][0, 32, 32]) == pytest.approx(expected, abs=FLOAT16_TOLERANCE)


def test_hu_slice_padded_with_air(tmp_path):
    volume = save_nifti(tmp_path / "ct.nii.gz", uniform_hu_volume(-300))

    store, manifest, _ = ingest([{"name": "ct", "kind": "nifti", "path": str(volume)}])

    # The slice is 32 rows by 48 columns, so air fills rows above and below it.
    assert manifest.loc[0, "original_height"] == 32
    assert manifest.loc[0, "original_width"] == 48
    assert store.arrays["hu"][0, 0, 32] == AIR_HU
    assert store.arrays["hu"][0, 32, 0] == -300
    assert float(store.arrays["image"][0, 0, 32]) == pytest.approx(AIR_WINDOWED, abs=FLOAT16_TOLERANCE)


def test_store_attributes_record_window(tmp_path):
    volume = save_nifti(tmp_path / "ct.nii.gz", uniform_hu_volume(-300))

    store, manifest, summary = ingest([{"name": "ct", "kind": "nifti", "path": str(volume)}], window_level_hu=-500)

    assert store.attributes == {
        "image_size": SIZE,
        "window_level_hu": -500.0,
        "window_width_hu": 1500.0,
        "slice_ids": manifest["slice_id"].tolist(),
    }
    assert summary["window_level_hu"] == -500.0
    assert summary["image_size"] == SIZE


def test_non_hu_nifti_has_no_hu(tmp_path):
    volume = np.zeros((48, 32, 1), dtype=np.float32)
    volume[:, 16:, 0] = 300.0
    path = save_nifti(tmp_path / "mr.nii.gz", volume)

    store, manifest, _ = ingest([{"name": "mr", "kind": "nifti", "path": str(path), "options": {"is_hu": False}}])

    assert bool(manifest.loc[0, "has_hu"]) is False
    assert not store.has("hu")
    assert float(store.arrays["image"].max()) == pytest.approx(1.0, abs=FLOAT16_TOLERANCE)
    assert float(store.arrays["image"].min()) == pytest.approx(0.0, abs=FLOAT16_TOLERANCE)


@pytest.fixture(scope="module")
def phantom_params() -> dict:
    """The base phantom settings, shrunk to two patients of two 64-pixel slices."""
    loaded = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "base" / "parameters_ingestion.yml"))
    params = loaded["phantom"]
    params.update(n_patients=2, slices_per_patient=2, image_size=SIZE)
    params["low_quality"]["n_angles"] = 45
    return params


def test_lowq_falls_back_to_image(tmp_path, phantom_params):
    scans = make_plain_folder(tmp_path / "scans", [70, 90])
    sources = parse_sources([{"name": "phantom", "kind": "phantom"}, folder_entry(scans, options={"images": "images"})])

    manifest, _, store = harmonise_sources(sources, phantom_params, PARAMS)

    phantom_rows = manifest.loc[manifest["source"] == "phantom", "store_index"].to_numpy()
    png_rows = manifest.loc[manifest["source"] == "scans", "store_index"].to_numpy()
    assert manifest.loc[manifest["source"] == "phantom", "has_lowq"].all()
    assert not manifest.loc[manifest["source"] == "scans", "has_lowq"].any()
    assert np.array_equal(store.arrays["image_lowq"][png_rows], store.arrays["image"][png_rows])
    assert not np.array_equal(store.arrays["image_lowq"][phantom_rows], store.arrays["image"][phantom_rows])
    assert manifest.loc[manifest["source"] == "scans", "severity"].isna().all()


# --- a mixed run shared by the manifest tests ----------------------------------------------------

# Gray level of each PNG slice by file stem. The stem gives volume, patient and slice index.
CASE_LEVELS = {"case007_1": 40, "case007_2": 80, "case007_3": 120, "case011_1": 160}
# HU of each NIfTI slice, by slice index (0 = most superior = the last z plane).
NIFTI_HU = {0: -300, 1: -600, 2: -900}


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """Ingest a PNG folder with masks and a three-slice NIfTI volume together."""
    root = tmp_path_factory.mktemp("mixed")
    scans = make_case_folder(root / "scans", CASE_LEVELS, shape=(24, 36))
    # Masks for three of the four PNG slices: class 1 left, class 2 right, of growing width.
    for number, stem in enumerate(["case007_1", "case007_2", "case011_1"]):
        mask = np.zeros((24, 36), dtype=np.uint8)
        mask[4:20, 2 : 6 + 4 * number] = 1
        mask[4:20, 20 : 24 + 2 * number] = 2
        save_png(scans / "masks" / f"{stem}.png", mask)
    volume = np.stack([np.full((48, 32), NIFTI_HU[index]) for index in (2, 1, 0)], axis=-1)
    nifti = save_nifti(root / "volumes" / "chest_volume.nii.gz", volume)

    entries = [
        folder_entry(scans, options={**CASE_OPTIONS, "masks": "masks", "mask_format": "index"}),
        {"name": "ct", "kind": "nifti", "path": str(nifti)},
    ]
    store, manifest, summary = ingest(entries)
    return {"store": store, "manifest": manifest, "summary": summary, "root": root}


EXPECTED_COLUMNS = [
    "slice_id",
    "store_index",
    "patient_id",
    "volume_id",
    "source",
    "source_kind",
    "slice_index",
    "spacing_row_mm",
    "spacing_col_mm",
    "slice_thickness_mm",
    "original_height",
    "original_width",
    "has_hu",
    "has_mask",
    "has_lowq",
    "lesion_pixels",
    "ggo_pixels",
    "consolidation_pixels",
    "lesion_fraction",
    "content_hash",
]


def test_manifest_columns_in_order(mixed_run):
    assert list(mixed_run["manifest"].columns) == EXPECTED_COLUMNS
    assert MANIFEST_COLUMNS == EXPECTED_COLUMNS


@pytest.mark.parametrize("column", ["slice_id", "patient_id", "volume_id", "source", "source_kind", "content_hash"])
def test_manifest_text_columns_are_strings(mixed_run, column):
    assert pd.api.types.is_string_dtype(mixed_run["manifest"][column])


@pytest.mark.parametrize(
    "column",
    [
        "store_index",
        "slice_index",
        "original_height",
        "original_width",
        "lesion_pixels",
        "ggo_pixels",
        "consolidation_pixels",
    ],
)
def test_manifest_count_columns_are_integers(mixed_run, column):
    assert pd.api.types.is_integer_dtype(mixed_run["manifest"][column])


@pytest.mark.parametrize("column", ["has_hu", "has_mask", "has_lowq"])
def test_manifest_flag_columns_are_booleans(mixed_run, column):
    assert pd.api.types.is_bool_dtype(mixed_run["manifest"][column])


@pytest.mark.parametrize(("column", "prefix"), [("slice_id", "sl"), ("patient_id", "pat"), ("volume_id", "vol")])
def test_pseudonym_format(mixed_run, column, prefix):
    values = mixed_run["manifest"][column].dropna()
    pattern = re.compile(rf"{prefix}-[0-9a-f]{{12}}")
    assert len(values) > 0
    assert all(pattern.fullmatch(value) for value in values), values.tolist()


def test_store_index_matches_store_rows(mixed_run):
    manifest, store = mixed_run["manifest"], mixed_run["store"]
    assert len(store) == len(manifest) == len(CASE_LEVELS) + len(NIFTI_HU)
    assert manifest["store_index"].tolist() == list(range(len(manifest)))


def test_store_rows_hold_their_slices(mixed_run):
    manifest, store = mixed_run["manifest"], mixed_run["store"]
    png_rows = manifest[manifest["source"] == "scans"]
    # case007 is the patient with three slices, case011 the one with one slice.
    slices_per_patient = png_rows["patient_id"].value_counts()
    patient_stem = {slices_per_patient.index[0]: "case007", slices_per_patient.index[1]: "case011"}
    assert slices_per_patient.tolist() == [3, 1]

    for row in png_rows.itertuples():
        stem = f"{patient_stem[row.patient_id]}_{row.slice_index}"
        centre = float(store.arrays["image"][row.store_index, 32, 32])
        assert centre == pytest.approx(CASE_LEVELS[stem] / 255, abs=FLOAT16_TOLERANCE), stem

    for row in manifest[manifest["source"] == "ct"].itertuples():
        assert store.arrays["hu"][row.store_index, 32, 32] == NIFTI_HU[row.slice_index], row.slice_index


@pytest.mark.parametrize(("source", "has_hu"), [("scans", False), ("ct", True)])
def test_has_hu_follows_source(mixed_run, source, has_hu):
    rows = mixed_run["manifest"][mixed_run["manifest"]["source"] == source]
    assert len(rows) > 0
    assert rows["has_hu"].tolist() == [has_hu] * len(rows)


def test_image_rows_keep_air_hu(mixed_run):
    manifest, store = mixed_run["manifest"], mixed_run["store"]
    rows = manifest.loc[manifest["source"] == "scans", "store_index"].to_numpy()
    assert np.all(store.arrays["hu"][rows] == AIR_HU)


def test_lesion_counts_match_stored_mask(mixed_run):
    manifest, store = mixed_run["manifest"], mixed_run["store"]
    masks = store.arrays["mask"]
    assert manifest["has_mask"].sum() == 3
    for row in manifest.itertuples():
        mask = masks[row.store_index]
        assert row.lesion_pixels == np.count_nonzero(mask), row.store_index
        assert row.ggo_pixels == np.count_nonzero(mask == 1), row.store_index
        assert row.consolidation_pixels == np.count_nonzero(mask == 2), row.store_index
        assert row.lesion_fraction == pytest.approx(np.count_nonzero(mask) / SIZE**2), row.store_index


def test_slices_without_mask_store_zeros(mixed_run):
    manifest, store = mixed_run["manifest"], mixed_run["store"]
    rows = manifest.loc[~manifest["has_mask"], "store_index"].to_numpy()
    assert len(rows) == 1 + len(NIFTI_HU)
    assert np.count_nonzero(store.arrays["mask"][rows]) == 0


def test_summary_counts_per_source(mixed_run):
    summary = mixed_run["summary"]
    assert summary["sources"]["scans"]["slices"] == len(CASE_LEVELS)
    assert summary["sources"]["scans"]["slices_with_mask"] == 3
    assert summary["sources"]["ct"]["slices"] == len(NIFTI_HU)
    assert summary["n_slices"] == len(CASE_LEVELS) + len(NIFTI_HU)
    # case007 and case011 from the PNG folder; the NIfTI volume has no patient key.
    assert summary["n_patients"] == 2


@pytest.mark.parametrize(
    ("height", "width", "classes"),
    [
        (30, 40, (0, 1, 2)),
        (30, 40, (0, 2)),
        (100, 90, (0, 1, 2)),
        (100, 90, (0, 2)),
    ],
    ids=["grow-three-classes", "grow-zero-two", "shrink-three-classes", "shrink-zero-two"],
)
def test_mask_resize_keeps_class_values(tmp_path, height, width, classes):
    # Vertical stripes, one per class. Linear resampling would put 1 between 0 and 2.
    mask = np.zeros((height, width), dtype=np.uint8)
    for position, value in enumerate(classes):
        mask[:, position * width // len(classes) : (position + 1) * width // len(classes)] = value
    scans = tmp_path / "scans"
    save_png(scans / "images" / "0.png", np.full((height, width), 100))
    save_png(scans / "masks" / "0.png", mask)

    store, manifest, _ = ingest([folder_entry(scans)])

    stored = store.arrays["mask"][0]
    assert stored.dtype == np.uint8
    assert set(np.unique(stored).tolist()) == set(classes)
    assert manifest.loc[0, "lesion_pixels"] == np.count_nonzero(stored)


# --- pseudonyms ----------------------------------------------------------------------------------


@pytest.fixture
def pseudonym_entries(tmp_path) -> list[dict]:
    scans = make_case_folder(tmp_path / "scans", CASE_LEVELS)
    nifti = save_nifti(tmp_path / "volumes" / "chest_volume.nii.gz", uniform_hu_volume(-600, n_slices=2))
    return [folder_entry(scans, options=CASE_OPTIONS), {"name": "ct", "kind": "nifti", "path": str(nifti)}]


@pytest.mark.parametrize("column", ["patient_id", "volume_id", "slice_id"])
def test_pseudonyms_stable_across_runs(pseudonym_entries, column):
    _, first, _ = ingest(pseudonym_entries)
    _, second, _ = ingest(pseudonym_entries)
    assert first[column].notna().any()
    assert first[column].tolist() == second[column].tolist()


@pytest.mark.parametrize("column", ["patient_id", "volume_id", "slice_id"])
def test_pseudonyms_change_with_secret(pseudonym_entries, column):
    _, first, _ = ingest(pseudonym_entries)
    _, second, _ = ingest(pseudonym_entries, pseudonym_secret="another-secret")
    first_values = set(first[column].dropna())
    second_values = set(second[column].dropna())
    assert len(first_values) > 0
    assert first_values.isdisjoint(second_values)


def test_pseudonyms_distinct_per_key(pseudonym_entries):
    _, manifest, _ = ingest(pseudonym_entries)
    assert manifest["slice_id"].nunique() == len(manifest)
    assert manifest["patient_id"].nunique() == 2
    # Two PNG volumes (case007, case011) and one NIfTI volume.
    assert manifest["volume_id"].nunique() == 3


def test_manifest_hides_original_keys(pseudonym_entries, tmp_path):
    _, manifest, summary = ingest(pseudonym_entries)
    text = manifest.to_csv() + repr(summary)
    forbidden = ["case007", "case011", "chest_volume", "images/", ".png", ".nii", str(tmp_path)]
    forbidden += list(CASE_LEVELS)
    for value in forbidden:
        assert value not in text, f"original key {value!r} found in the manifest or summary"


# --- bad input -----------------------------------------------------------------------------------


def fake_hu_reader(slices: dict[str, np.ndarray | tuple[np.ndarray, np.ndarray]]):
    """Return a reader that yields one HU slice per file name, whatever the path.

    A value is the pixel array, or a (pixels, mask) pair.
    """

    def read(path, options, skipped=None):
        for index, (file_key, value) in enumerate(slices.items()):
            pixels, mask = value if isinstance(value, tuple) else (value, None)
            yield RawSlice(
                pixels=pixels,
                is_hu=True,
                file_key=file_key,
                mask=mask,
                patient_key="p1",
                volume_key="v1",
                slice_index=index,
            )

    return read


def slice_with(value: float, shape: tuple[int, ...] = (16, 16)) -> np.ndarray:
    pixels = np.full(shape, -600.0, dtype=np.float32)
    pixels.flat[37] = value
    return pixels


def mask_of(shape: tuple[int, int], value: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[2:6, 2:6] = value
    return mask


@pytest.mark.parametrize(
    ("bad_slice", "problem"),
    [
        (slice_with(np.nan), "NaN or infinite"),
        (slice_with(np.inf), "NaN or infinite"),
        (slice_with(-np.inf), "NaN or infinite"),
        (slice_with(-600.0, shape=(4, 16, 16)), "expected a 2D image"),
        ((slice_with(-600.0), mask_of((16, 12), 1)), "does not match image shape"),
        ((slice_with(-600.0), mask_of((16, 16), 3)), "outside [0, 1, 2]"),
    ],
    ids=["nan", "inf", "minus-inf", "three-d", "mask-shape", "mask-value"],
)
def test_bad_slice_names_file(tmp_path, monkeypatch, bad_slice, problem):
    slices = {"a.nii.gz": slice_with(-600.0), "b.nii.gz": bad_slice}
    monkeypatch.setitem(READERS, "nifti", fake_hu_reader(slices))
    (tmp_path / "volumes").mkdir()

    with pytest.raises(InvalidSourceError) as caught:
        ingest([{"name": "ct", "kind": "nifti", "path": str(tmp_path / "volumes")}])

    assert caught.value.path == str(tmp_path / "volumes" / "b.nii.gz")
    assert problem in caught.value.problem


def test_mask_outside_ingestion_values_raises(tmp_path):
    # The reader accepts class 2, but this run allows only a binary mask.
    scans = tmp_path / "scans"
    save_png(scans / "images" / "0.png", np.full((16, 16), 90))
    save_png(scans / "masks" / "0.png", mask_of((16, 16), 2))

    with pytest.raises(InvalidSourceError) as caught:
        ingest([folder_entry(scans)], mask_values=[0, 1])

    assert caught.value.path == str(scans / "images" / "0.png")
    assert "[2] outside [0, 1]" in caught.value.problem


def test_skip_invalid_counts_nan_slice(tmp_path, monkeypatch):
    pixels = {"a.nii.gz": slice_with(-600.0), "b.nii.gz": slice_with(np.nan), "c.nii.gz": slice_with(-300.0)}
    monkeypatch.setitem(READERS, "nifti", fake_hu_reader(pixels))
    (tmp_path / "volumes").mkdir()

    store, manifest, summary = ingest(
        [{"name": "ct", "kind": "nifti", "path": str(tmp_path / "volumes"), "skip_invalid": True}]
    )

    assert summary["sources"]["ct"]["skipped_files"] == 1
    assert summary["sources"]["ct"]["slices"] == 2
    assert manifest["slice_index"].tolist() == [0, 2]
    assert len(store) == 2


@pytest.mark.parametrize("severity", ["mild", "moderate", "CT-2", "0"])
def test_unknown_severity_names_file(tmp_path, severity):
    scans = make_plain_folder(tmp_path / "scans", [50, 100])
    labels = write_csv(
        tmp_path / "scans" / "labels.csv",
        f"file,severity\nimages/0.png,severe\nimages/1.png,{severity}\n",
    )

    with pytest.raises(InvalidSourceError) as caught:
        ingest([folder_entry(scans, options={"images": "images"}, labels=label_entry(labels))])

    assert caught.value.path == str(scans / "images" / "1.png")
    assert repr(severity) in caught.value.problem


@pytest.mark.parametrize("severity", ["ordinary", "Severe", " CRITICAL "])
def test_known_severity_accepted(tmp_path, severity):
    scans = make_plain_folder(tmp_path / "scans", [50])
    labels = write_csv(tmp_path / "scans" / "labels.csv", f'file,severity\nimages/0.png,"{severity}"\n')

    _, manifest, _ = ingest([folder_entry(scans, options={"images": "images"}, labels=label_entry(labels))])

    assert manifest.loc[0, "severity"].strip().lower() == severity.strip().lower()


@pytest.fixture
def partly_labelled(tmp_path) -> tuple[Path, Path]:
    """A folder of three PNG slices and a label table without a row for images/1.png."""
    scans = make_plain_folder(tmp_path / "scans", [50, 100, 150])
    labels = write_csv(
        tmp_path / "scans" / "labels.csv",
        "file,diagnosis\nimages/0.png,COVID-19\nimages/2.png,Normal\n",
    )
    return scans, labels


def test_missing_label_row_error(partly_labelled):
    scans, labels = partly_labelled
    entry = folder_entry(scans, options={"images": "images"}, labels=label_entry(labels, missing="error"))

    with pytest.raises(InvalidSourceError) as caught:
        ingest([entry])

    assert caught.value.path == str(labels)
    assert "'images/1.png'" in caught.value.problem


def test_missing_label_row_skip(partly_labelled):
    scans, labels = partly_labelled
    entry = folder_entry(scans, options={"images": "images"}, labels=label_entry(labels, missing="skip"))

    store, manifest, summary = ingest([entry])

    assert manifest["diagnosis"].tolist() == ["COVID-19", "Normal"]
    assert len(store) == 2
    assert summary["sources"]["scans"]["slices"] == 2
    # The stored images are slices 0 and 2 (gray 50 and 150), not slice 1.
    centres = [float(value) for value in store.arrays["image"][:, 32, 32]]
    assert centres == pytest.approx([50 / 255, 150 / 255], abs=FLOAT16_TOLERANCE)


def test_missing_label_row_null(partly_labelled):
    scans, labels = partly_labelled
    entry = folder_entry(scans, options={"images": "images"}, labels=label_entry(labels, missing="null"))

    store, manifest, _ = ingest([entry])

    assert len(manifest) == 3
    assert len(store) == 3
    assert manifest["diagnosis"].isna().tolist() == [False, True, False]
    assert manifest.loc[0, "diagnosis"] == "COVID-19"
    assert manifest.loc[2, "diagnosis"] == "Normal"


def test_empty_source_after_skip_raises(tmp_path):
    scans = make_plain_folder(tmp_path / "scans", [50, 100])
    labels = write_csv(tmp_path / "scans" / "labels.csv", "file,diagnosis\nimages/7.png,Normal\n")
    entry = folder_entry(scans, options={"images": "images"}, labels=label_entry(labels, missing="skip"))

    with pytest.raises(InvalidSourceError) as caught:
        ingest([entry])

    assert caught.value.path == str(scans)
    assert "'scans' produced no slice" in caught.value.problem


def test_all_files_skipped_raises(tmp_path):
    scans = tmp_path / "scans"
    save_corrupt_png(scans / "images" / "0.png")
    save_corrupt_png(scans / "images" / "1.png")

    with pytest.raises(InvalidSourceError) as caught:
        ingest([folder_entry(scans, options={"images": "images"}, skip_invalid=True)])

    assert caught.value.path == str(scans)
    assert "'scans' produced no slice" in caught.value.problem


@pytest.mark.parametrize("column", ["patient_id", "source", "has_mask", "lesion_pixels", "slice_index"])
def test_label_column_clash_raises(tmp_path, column):
    scans = make_plain_folder(tmp_path / "scans", [50])
    labels = write_csv(tmp_path / "scans" / "labels.csv", f"file,{column}\nimages/0.png,x\n")

    with pytest.raises(InvalidSourceError) as caught:
        ingest([folder_entry(scans, options={"images": "images"}, labels=label_entry(labels))])

    assert caught.value.path == str(scans / "images" / "0.png")
    assert f"label column '{column}' clashes" in caught.value.problem


# --- skip_invalid ----------------------------------------------------------------------------------


@pytest.fixture
def folder_with_corrupt_png(tmp_path) -> Path:
    """Write four PNG files, of which 0, 1 and 3 decode (gray 40, 80, 160) and 2 is corrupt."""
    scans = tmp_path / "scans"
    for number, level in [(0, 40), (1, 80), (3, 160)]:
        save_png(scans / "images" / f"{number}.png", np.full((20, 24), level))
    save_corrupt_png(scans / "images" / "2.png")
    return scans


def test_skip_invalid_counts_corrupt_png(folder_with_corrupt_png):
    entry = folder_entry(folder_with_corrupt_png, options={"images": "images"}, skip_invalid=True)

    store, manifest, summary = ingest([entry])

    assert summary["sources"]["scans"]["skipped_files"] == 1
    assert summary["sources"]["scans"]["slices"] == 3
    assert len(manifest) == 3
    centres = [float(value) for value in store.arrays["image"][:, 32, 32]]
    assert centres == pytest.approx([40 / 255, 80 / 255, 160 / 255], abs=FLOAT16_TOLERANCE)


def test_corrupt_png_raises_by_default(folder_with_corrupt_png):
    with pytest.raises(InvalidSourceError) as caught:
        ingest([folder_entry(folder_with_corrupt_png, options={"images": "images"})])

    assert caught.value.path == str(folder_with_corrupt_png / "images" / "2.png")


def test_skip_invalid_only_on_its_source(folder_with_corrupt_png, tmp_path):
    clean = make_plain_folder(tmp_path / "clean", [90, 110])
    entries = [
        folder_entry(folder_with_corrupt_png, options={"images": "images"}, skip_invalid=True),
        folder_entry(clean, name="clean", options={"images": "images"}),
    ]

    _, manifest, summary = ingest(entries)

    assert summary["sources"]["clean"]["skipped_files"] == 0
    assert summary["sources"]["scans"]["skipped_files"] == 1
    assert manifest["source"].value_counts().to_dict() == {"scans": 3, "clean": 2}


# --- label joins -----------------------------------------------------------------------------------

SAMPLE_LABEL_COLUMNS = ["diagnosis", "slice_infection", "age", "rank_superior_to_inferior"]


@pytest.fixture(scope="module")
def sample_dicom_run(shared_data_dir):
    """Ingest the real DICOM series with their label table joined by file."""
    classification = shared_data_dir / "classification"
    entry = {
        "name": "covid_ct_md",
        "kind": "dicom",
        "path": str(classification / "dicom"),
        "labels": label_entry(classification / "labels.csv", columns=SAMPLE_LABEL_COLUMNS),
    }
    store, manifest, summary = ingest([entry])
    table = pd.read_csv(classification / "labels.csv", dtype=str, keep_default_na=False)
    return {"store": store, "manifest": manifest, "summary": summary, "table": table}


def test_sample_labels_reach_every_slice(sample_dicom_run):
    manifest = sample_dicom_run["manifest"]
    assert len(manifest) == 118
    assert manifest["diagnosis"].notna().all()
    assert manifest["diagnosis"].value_counts().to_dict() == {"CAP": 42, "Normal": 39, "COVID-19": 37}


def test_sample_labels_follow_their_file(sample_dicom_run):
    manifest = sample_dicom_run["manifest"]
    # The table ranks each file superior to inferior within the full series, and the
    # sample keeps every 4th slice, so a label on the right file has rank 4 x slice_index.
    ranks = manifest["rank_superior_to_inferior"].astype(int)
    assert ranks.tolist() == (4 * manifest["slice_index"]).tolist()
    assert (manifest.groupby("patient_id")["diagnosis"].nunique() == 1).all()


def test_sample_infection_counts_match_table(sample_dicom_run):
    manifest, table = sample_dicom_run["manifest"], sample_dicom_run["table"]
    joined = manifest.groupby(["diagnosis", "slice_infection"]).size().to_dict()
    expected = table.groupby(["diagnosis", "slice_infection"]).size().to_dict()
    assert joined == expected


@pytest.mark.parametrize("column", SAMPLE_LABEL_COLUMNS)
def test_sample_labels_kept_as_text(sample_dicom_run, column):
    values = sample_dicom_run["manifest"][column]
    assert pd.api.types.is_string_dtype(values)
    assert set(values) == set(sample_dicom_run["table"][column])


def test_sample_manifest_hides_identifiers(sample_dicom_run):
    text = sample_dicom_run["manifest"].to_csv()
    table = sample_dicom_run["table"]
    forbidden = set(table["patient_id"]) | {Path(file).stem for file in table["file"]}
    for value in sorted(forbidden):
        assert value not in text, f"original identifier {value!r} found in the manifest"


def test_sample_label_clash_names_column(shared_data_dir):
    classification = shared_data_dir / "classification"
    # Without a column list every table column is copied, and the table has its own patient_id.
    entry = {
        "name": "covid_ct_md",
        "kind": "dicom",
        "path": str(classification / "dicom"),
        "labels": label_entry(classification / "labels.csv"),
    }

    with pytest.raises(InvalidSourceError) as caught:
        ingest([entry])

    assert caught.value.path.endswith(".dcm")
    assert "'patient_id' clashes" in caught.value.problem


@pytest.fixture
def patient_folder(tmp_path) -> Path:
    """Three PNG slices of patients 001 (two slices) and 010 (one slice)."""
    return make_case_folder(tmp_path / "scans", {"p001_1": 60, "p001_2": 70, "p010_1": 80})


PATIENT_OPTIONS = {"images": "images", "patient_pattern": r"^p(\d+)_\d+$"}


def patient_labels(path: Path, patient: str, site: str) -> dict:
    write_csv(path, f"patient,site,cohort\n{patient},{site},A\n010,0100,B\n")
    return {"path": str(path), "join_on": "patient", "key_column": "patient", "columns": ["site"]}


def test_patient_join_keeps_leading_zeros(patient_folder, tmp_path):
    labels = patient_labels(tmp_path / "patients.csv", "001", "007")

    _, manifest, _ = ingest([folder_entry(patient_folder, options=PATIENT_OPTIONS, labels=labels)])

    assert pd.api.types.is_string_dtype(manifest["site"])
    assert manifest["site"].value_counts().to_dict() == {"007": 2, "0100": 1}
    assert (manifest.groupby("patient_id")["site"].nunique() == 1).all()
    assert "cohort" not in manifest.columns


def test_patient_key_not_read_as_number(patient_folder, tmp_path):
    # "1" does not match the patient key "001" because keys are compared as text.
    labels = patient_labels(tmp_path / "patients.csv", "1", "007")

    with pytest.raises(InvalidSourceError) as caught:
        ingest([folder_entry(patient_folder, options=PATIENT_OPTIONS, labels=labels)])

    assert caught.value.path == str(tmp_path / "patients.csv")
    assert "'001'" in caught.value.problem
