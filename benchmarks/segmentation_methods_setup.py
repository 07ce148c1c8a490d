"""Datasets, methods and settings of the segmentation methods benchmark, and the scratch Kedro projects.

Each dataset gets its own copy of the project's ``conf/`` under
``data/benchmarks/``, where the ingestion and splits pipelines build its
slice store and split manifest and the pretraining pipeline trains its
self-supervised encoder. ``prepare_dataset`` builds or reuses them and
loads what the benchmark needs.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import os
import shutil
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.models import segmentation as segmentation_models
from lungct_kedro.training import segmentation as segmentation_training
from lungct_kedro.training.cross_validation import cross_validation_groups

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- datasets and methods


@dataclass(frozen=True)
class DatasetSpec:
    """Build environment and source roles of one benchmark dataset.

    Attributes:
        name: ``phantom`` or ``real``.
        env: Kedro environment of the scratch project.
        labeled_sources: Sources whose slices with masks are cross-validated.
        unlabeled_sources: Sources whose slices feed the semi-supervised
            methods and the self-supervised encoder (their masks, if any,
            are never read).
        class_column: Manifest column of the multi-task head's labels.
        class_values: Its classes, in order.
        class_sources: Sources whose slices carry those labels.
        extra_catalog: YAML written to ``conf/<env>/catalog.yml`` of the
            scratch copy, or None.
    """

    name: str
    env: str
    labeled_sources: tuple[str, ...]
    unlabeled_sources: tuple[str, ...]
    class_column: str
    class_values: tuple[str, ...]
    class_sources: tuple[str, ...]
    extra_catalog: str | None = None


# A second phantom source of other patients gives the phantom unlabeled slices, so that
# neither the semi-supervised methods nor the encoder see a test slice, even without its mask.
PHANTOM_CATALOG = """\
raw_sources:
  type: lungct_kedro.datasets.ScanSourcesDataset
  pseudonym_secret: ${oc.env:LUNGCT_PSEUDONYM_SECRET,null}
  sources:
    - name: phantom
      kind: phantom
    - name: phantom_unlabeled
      kind: phantom
      options:
        seed: 2031
        n_patients: %(unlabeled_patients)d
  metadata:
    kedro-viz:
      layer: raw
"""

DATASETS: dict[str, DatasetSpec] = {
    "phantom": DatasetSpec(
        name="phantom",
        env="benchmark_phantom",
        labeled_sources=("phantom",),
        unlabeled_sources=("phantom_unlabeled",),
        class_column="severity",
        class_values=("ordinary", "severe", "critical"),
        class_sources=("phantom", "phantom_unlabeled"),
        extra_catalog=PHANTOM_CATALOG,
    ),
    # The COVID-SemiSeg slices have no patient ids, so they are grouped by slice.
    "real": DatasetSpec(
        name="real",
        env="real",
        labeled_sources=("covid_semiseg",),
        unlabeled_sources=("unlabeled",),
        class_column="slice_infection",
        class_values=("0", "1"),
        class_sources=("covid_ct_md",),
    ),
}


@dataclass(frozen=True)
class MethodSpec:
    """One compared method.

    Attributes:
        name: Row name in the tables.
        kind: ``threshold`` (intensity floor), ``minimal`` (the minimal-loop
            U-Net) or ``pipeline`` (``train_segmentation``).
        description: One line for the documentation.
        overrides: Merged into the ``segmentation`` parameters; every key
            must exist there, else the method is skipped.
        optional_overrides: Merged only where the key exists.
        unlabeled: Passes ``unlabeled_indices``.
        class_targets: Passes ``class_targets`` and sets the multi-task
            label column and classes of the dataset.
        ssl_encoder: Passes the pretraining pipeline's encoder as
            ``init_encoder_state``.
        predict_options: Passes ``inference.flip_tta`` and
            ``inference.postprocess`` to ``predict_class_maps``.
        reuse_model_of: Name of the method whose trained model this one
            predicts with (a variant that changes only inference).
    """

    name: str
    kind: str
    description: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    optional_overrides: Mapping[str, Any] = field(default_factory=dict)
    unlabeled: bool = False
    class_targets: bool = False
    ssl_encoder: bool = False
    predict_options: bool = False
    reuse_model_of: str | None = None


METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("threshold_floor", "threshold", "image ≥ t, with t fitted on the training folds (train + val)"),
    MethodSpec(
        "minimal_unet",
        "minimal",
        "MONAI UNet with the pipeline's channels, DiceCELoss, SGD, no augmentation (benchmarks/minimal_unet.py)",
    ),
    MethodSpec(
        "unet",
        "pipeline",
        "the segmentation pipeline's U-Net, supervised",
        overrides={"model": {"architecture": "unet"}},
        optional_overrides={"method": "supervised"},
    ),
    MethodSpec(
        "unet_tta_postprocess",
        "pipeline",
        "the `unet` models, predicting with flip TTA, the lung mask and removal of lesions under 10 px",
        overrides={"inference": {"flip_tta": True, "postprocess": {"lung_mask": True, "min_component_pixels": 10}}},
        predict_options=True,
        reuse_model_of="unet",
    ),
    MethodSpec(
        "swin_unetr",
        "pipeline",
        "MONAI SwinUNETR, supervised",
        overrides={"model": {"architecture": "swin_unetr"}},
        optional_overrides={"method": "supervised"},
    ),
    MethodSpec(
        "dynunet",
        "pipeline",
        "MONAI DynUNet (the nnU-Net style network), supervised",
        overrides={"model": {"architecture": "dynunet"}},
        optional_overrides={"method": "supervised"},
    ),
    MethodSpec(
        "mean_teacher_unet",
        "pipeline",
        "U-Net, Mean Teacher with the unlabeled slices",
        overrides={"method": "mean_teacher", "model": {"architecture": "unet"}},
        unlabeled=True,
    ),
    MethodSpec(
        "multitask_mean_teacher_unet",
        "pipeline",
        "U-Net, Mean Teacher, plus a classification head on the dataset's slice labels",
        overrides={"method": "mean_teacher", "model": {"architecture": "unet"}, "multitask": {"enabled": True}},
        unlabeled=True,
        class_targets=True,
    ),
    MethodSpec(
        "flexible_unet_resnet18_scratch",
        "pipeline",
        "MONAI FlexibleUNet, ResNet-18 encoder with random weights",
        overrides={"model": {"architecture": "flexible_unet_resnet18"}},
        optional_overrides={"method": "supervised", "model": {"encoder_init": "random"}},
    ),
    MethodSpec(
        "flexible_unet_resnet18_ssl",
        "pipeline",
        "MONAI FlexibleUNet, ResNet-18 encoder from the pretraining pipeline",
        overrides={"model": {"architecture": "flexible_unet_resnet18"}},
        optional_overrides={"method": "supervised", "model": {"encoder_init": "pretrained"}},
        ssl_encoder=True,
    ),
)


@dataclass
class Settings:
    """Command-line settings of one benchmark invocation."""

    datasets: list[str]
    methods: list[str]
    folds: int
    seeds: list[int]
    cpu_budget_s: float
    image_size: int
    val_fraction: float
    data_dir: Path
    scratch_dir: Path
    probe_iterations: int
    threads: int
    quick: bool
    rebuild: bool
    phantom: dict[str, Any]
    pretraining: dict[str, Any]
    docs_output: Path | None
    project_path: Path | None
    verbose: bool
    docs_marker: str = "segmentation-methods"
    report_only: bool = False


@dataclass
class PreparedDataset:
    """A dataset ready to benchmark: its store, the row sets and the loaded parameters."""

    spec: DatasetSpec
    store: SliceStore
    manifest: pd.DataFrame
    labeled: pd.DataFrame
    groups: pd.Series
    unlabeled_rows: np.ndarray
    class_rows: pd.DataFrame
    segmentation_params: dict[str, Any]
    encoder: Mapping[str, Any] | None
    encoder_note: str
    prepare_seconds: float


# ---------------------------------------------------------------- parameters


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` merged in, key by key, at every depth."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def leaf_paths(tree: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Yield the dotted path of every leaf of a nested mapping."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from leaf_paths(value, f"{path}.")
        else:
            yield path


def has_path(tree: Mapping[str, Any], path: str) -> bool:
    """Tell whether the dotted ``path`` exists in a nested mapping."""
    node: Any = tree
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def keep_existing(tree: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the leaves of ``tree`` whose path does not exist in ``base``."""
    existing: dict[str, Any] = {}
    for key, value in tree.items():
        if key not in base:
            continue
        if isinstance(value, Mapping) and isinstance(base[key], Mapping):
            inner = keep_existing(value, base[key])
            if inner:
                existing[key] = inner
        else:
            existing[key] = value
    return existing


def method_overrides(method: MethodSpec, dataset: DatasetSpec) -> dict[str, Any]:
    """Return the method's required overrides, with the dataset's multi-task labels where needed."""
    overrides = copy.deepcopy(dict(method.overrides))
    if method.class_targets:
        overrides = deep_merge(
            overrides,
            {"multitask": {"label_column": dataset.class_column, "classes": list(dataset.class_values)}},
        )
    return overrides


def known_parameters(base: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return the tree of ``segmentation`` keys the training code accepts.

    That is ``KNOWN_KEYS`` of ``training.segmentation_params`` where the
    training code declares it (a missing key then takes the code's default),
    else the keys of the loaded parameters.
    """
    try:
        from lungct_kedro.training.segmentation_params import KNOWN_KEYS
    except ImportError:
        return base
    return KNOWN_KEYS


def method_params(method: MethodSpec, dataset: DatasetSpec, base: Mapping[str, Any]) -> dict[str, Any]:
    """Merge the method's overrides into the dataset's ``segmentation`` parameters."""
    params = deep_merge(base, keep_existing(method.optional_overrides, known_parameters(base)))
    return deep_merge(params, method_overrides(method, dataset))


def unsupported_reason(
    method: MethodSpec, dataset: PreparedDataset, methods_by_name: Mapping[str, MethodSpec]
) -> str | None:
    """Say why ``method`` cannot run on ``dataset`` with the current training code, or return None.

    A parameter is supported when ``known_parameters`` lists it. New
    keyword arguments are looked up in the signatures of
    ``train_segmentation`` and ``predict_class_maps``, and architectures in
    ``ARCHITECTURES`` of ``models.segmentation``.
    """
    if method.kind != "pipeline":
        return None
    if not has_path(known_parameters(dataset.segmentation_params), "training.cpu_time_budget_s"):
        return "the training code has no training.cpu_time_budget_s, so the common CPU budget cannot be applied"
    if method.reuse_model_of:
        base_reason = unsupported_reason(methods_by_name[method.reuse_model_of], dataset, methods_by_name)
        if base_reason:
            return f"its base method {method.reuse_model_of} is skipped: {base_reason}"
    base = dataset.segmentation_params
    known = known_parameters(base)
    missing = [path for path in leaf_paths(method_overrides(method, dataset.spec)) if not has_path(known, path)]
    if missing:
        return f"the training code does not read segmentation parameter(s) {', '.join(missing)} yet"
    architecture = method_params(method, dataset.spec, base)["model"].get("architecture", "unet")
    architectures = getattr(segmentation_models, "ARCHITECTURES", None)
    if architectures is not None and architecture not in architectures:
        return f"architecture {architecture!r} is not built by models/segmentation.py yet (it builds {list(architectures)})"
    train_arguments = inspect.signature(segmentation_training.train_segmentation).parameters
    predict_arguments = inspect.signature(segmentation_training.predict_class_maps).parameters
    if method.unlabeled and "unlabeled_indices" not in train_arguments:
        return "train_segmentation has no unlabeled_indices argument yet"
    if method.class_targets and "class_targets" not in train_arguments:
        return "train_segmentation has no class_targets argument yet"
    if method.predict_options and not {"flip_tta", "postprocess"} <= set(predict_arguments):
        return "predict_class_maps has no flip_tta/postprocess arguments yet"
    if method.unlabeled and len(dataset.unlabeled_rows) == 0:
        return f"no unlabeled slices from {list(dataset.spec.unlabeled_sources)}"
    if method.class_targets and dataset.class_rows.empty:
        return f"no slice of {list(dataset.spec.class_sources)} carries a {dataset.spec.class_column} label"
    if method.ssl_encoder and dataset.encoder is None:
        return f"no pre-trained encoder: {dataset.encoder_note}"
    return None


# ---------------------------------------------------------------- scratch project


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Run the body with ``path`` as the working directory; the catalog's relative paths start there."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def scratch_runtime_params(dataset: DatasetSpec, settings: Settings) -> dict[str, Any]:
    """Return the runtime parameters of the scratch project's ingestion and splits runs."""
    params: dict[str, Any] = {
        "ingestion": {"image_size": settings.image_size},
        "phantom": {**settings.phantom, "image_size": settings.image_size},
    }
    if dataset.name == "real":
        params["data_dir"] = str(settings.data_dir)
    return params


def configuration_digest(conf: Path, env: str) -> str:
    """Hash the configuration that shapes the slice store, split and encoder."""
    digest = hashlib.sha256()
    for folder in (conf / "base", conf / env):
        for path in sorted(folder.glob("*.yml")):
            if path.name.startswith(("catalog", "parameters_ingestion", "parameters_splits", "parameters_pretraining")):
                digest.update(path.name.encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def copy_project(dataset: DatasetSpec, settings: Settings, folder: Path) -> None:
    """Refresh the scratch project's ``conf/`` and ``pyproject.toml`` from the checkout."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder / "conf", ignore_errors=True)
    shutil.copytree(ROOT / "conf", folder / "conf", ignore=shutil.ignore_patterns("local"))
    (folder / "conf" / "local").mkdir()
    shutil.copy(ROOT / "pyproject.toml", folder / "pyproject.toml")
    # Kedro's bootstrap checks that a source folder exists; the package itself is installed.
    (folder / "src").mkdir(exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    if dataset.extra_catalog:
        env_folder = folder / "conf" / dataset.env
        env_folder.mkdir(exist_ok=True)
        text = dataset.extra_catalog % {"unlabeled_patients": int(settings.phantom["unlabeled_patients"])}
        (env_folder / "catalog.yml").write_text(text)


def run_scratch_pipelines(
    folder: Path, env: str, params: Mapping[str, Any], pipelines: list[str], node_names: list[str] | None = None
) -> None:
    """Run pipelines of the scratch project in one Kedro session.

    MLflow tracking is off for these runs unless ``LUNGCT_MLFLOW_ENABLED`` is
    set: they only prepare data, and their store would sit in the scratch
    folder, apart from the project's runs.
    """
    os.environ.setdefault("LUNGCT_MLFLOW_ENABLED", "false")
    bootstrap_project(folder)
    with working_directory(folder), KedroSession.create(
        project_path=folder, env=env, runtime_params=dict(params)
    ) as session:
        session.run(pipeline_names=pipelines, node_names=node_names)


def prepare_dataset(dataset: DatasetSpec, settings: Settings) -> PreparedDataset:
    """Build or reuse the dataset's slice store, split and encoder in its scratch project, and load them.

    Raises:
        ValueError: A declared source has no slices in the manifest.
    """
    started = time.perf_counter()
    folder = settings.scratch_dir / dataset.name
    copy_project(dataset, settings, folder)
    runtime = scratch_runtime_params(dataset, settings)
    stamp = {
        "runtime_params": runtime,
        "configuration": configuration_digest(folder / "conf", dataset.env),
        "pretraining": settings.pretraining,
        "unlabeled_sources": list(dataset.unlabeled_sources),
    }
    stamp_path = folder / "benchmark_settings.json"
    built = (
        not settings.rebuild
        and stamp_path.is_file()
        and json.loads(stamp_path.read_text()) == json.loads(json.dumps(stamp))
        and (folder / "data" / "05_model_input" / "split_manifest.parquet").is_file()
    )
    if built:
        print(f"{dataset.name}: reusing the slice store and split in {folder}", flush=True)
    else:
        print(f"{dataset.name}: building the slice store and split in {folder} (ingestion, splits)", flush=True)
        stamp_path.unlink(missing_ok=True)
        run_scratch_pipelines(folder, dataset.env, runtime, ["ingestion", "splits"])

    pretraining_params = deep_merge(runtime, {"pretraining": {**settings.pretraining, "sources": list(dataset.unlabeled_sources)}})
    encoder_path = folder / "data" / "06_models" / "pretrained_encoder.pt"
    encoder_note = ""
    if not (built and encoder_path.is_file()):
        print(f"{dataset.name}: training the self-supervised encoder (pretraining pipeline)", flush=True)
        encoder_path.unlink(missing_ok=True)
        cpu_started = time.process_time()
        try:
            run_scratch_pipelines(
                folder,
                dataset.env,
                pretraining_params,
                ["pretraining"],
                node_names=["select_pretraining_slices", "pretrain_ssl_encoder"],
            )
            (folder / "encoder_cpu_seconds.txt").write_text(f"{time.process_time() - cpu_started:.1f}\n")
        except Exception as error:  # reported in the table as the reason the SSL method is skipped
            encoder_note = f"the pretraining pipeline failed: {type(error).__name__}: {error}"
            traceback.print_exc()
    stamp_path.write_text(json.dumps(stamp, indent=2))

    bootstrap_project(folder)
    with working_directory(folder), KedroSession.create(
        project_path=folder, env=dataset.env, runtime_params=pretraining_params
    ) as session:
        context = session.load_context()
        store = context.catalog.load("slice_store")
        manifest = context.catalog.load("split_manifest")
        segmentation_params = copy.deepcopy(dict(context.params["segmentation"]))
        encoder = context.catalog.load("pretrained_encoder") if encoder_path.is_file() and not encoder_note else None
    if encoder is not None:
        cpu_file = folder / "encoder_cpu_seconds.txt"
        cpu_text = f"{float(cpu_file.read_text()):.0f} CPU s" if cpu_file.is_file() else "CPU time not recorded"
        encoder_note = (
            f"{encoder.get('method', '?')} encoder, {encoder.get('n_slices', '?')} train slices of "
            f"{', '.join(encoder.get('sources', []))}, {encoder.get('settings', {}).get('training', {}).get('iterations', '?')} "
            f"iterations at {encoder.get('input_size', '?')} px; {cpu_text}, outside the per-run budget"
        )
    elif not encoder_note:
        encoder_note = "the pretraining pipeline wrote no encoder"

    store.check_rows(manifest["slice_id"], manifest["store_index"])
    for source in (*dataset.labeled_sources, *dataset.unlabeled_sources):
        if not (manifest["source"] == source).any():
            raise ValueError(
                f"{dataset.name}: source {source!r} has no slice in {folder}/data/05_model_input/split_manifest.parquet; "
                f"the manifest has {sorted(manifest['source'].unique())}; rerun with --rebuild"
            )
    labeled = manifest[manifest["has_mask"] & manifest["source"].isin(dataset.labeled_sources)].reset_index(drop=True)
    unlabeled_rows = manifest.loc[manifest["source"].isin(dataset.unlabeled_sources), "store_index"].to_numpy(np.int64)
    class_rows = class_label_rows(manifest, dataset)
    return PreparedDataset(
        spec=dataset,
        store=store,
        manifest=manifest,
        labeled=labeled,
        groups=cross_validation_groups(labeled),
        unlabeled_rows=unlabeled_rows,
        class_rows=class_rows,
        segmentation_params=segmentation_params,
        encoder=encoder,
        encoder_note=encoder_note,
        prepare_seconds=time.perf_counter() - started,
    )


def class_label_rows(manifest: pd.DataFrame, dataset: DatasetSpec) -> pd.DataFrame:
    """Return ``store_index`` and ``class_index`` of the slices that carry one of the dataset's class labels."""
    if dataset.class_column not in manifest.columns:
        return pd.DataFrame(columns=["store_index", "class_index"])
    part = manifest[manifest["source"].isin(dataset.class_sources) & manifest[dataset.class_column].notna()]
    labels = part[dataset.class_column].map(label_text)
    index = {value: position for position, value in enumerate(dataset.class_values)}
    known = labels.isin(list(index))
    return pd.DataFrame(
        {"store_index": part.loc[known, "store_index"].to_numpy(np.int64), "class_index": labels[known].map(index).to_numpy(np.int64)}
    )


def label_text(value: Any) -> str:
    """Write a label as text, with whole numbers stored as floats written without ``.0``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
