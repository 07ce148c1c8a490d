"""Node names and dataset layers that kedro-viz shows in the lineage.

kedro-viz labels a node with its ``name=`` (an unnamed node gets its
function's name plus a hash suffix) and draws one band per
``metadata: kedro-viz: layer:`` of the catalog. A dataset without a layer
floats outside the bands. If one dataset's layer comes after another's in the
graph but before it in the project's order, the layers form a cycle, and
kedro-viz then turns off the layer bands for the whole flowchart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml
from kedro.framework.project import pipelines, settings
from kedro.io import CatalogConfigResolver
from kedro.pipeline import Node, Pipeline

from tests.conftest import REPO_ROOT
from tests.viz.lineage import PROJECT_LAYERS


#: A node name in snake_case, optionally prefixed by dotted namespaces.
READABLE_NAME = re.compile(r"([a-z][a-z0-9_]*\.)*[a-z][a-z0-9]*(_[a-z0-9]+)*")

CATALOG_FILES = sorted((REPO_ROOT / "conf").glob("*/catalog*.yml"))
ENVIRONMENTS = sorted(path.name for path in (REPO_ROOT / "conf").iterdir() if path.is_dir() and path.name != "local")


def declared_layer(entry: object) -> str | None:
    """Return the ``metadata: kedro-viz: layer:`` of one catalog entry, or None."""
    if not isinstance(entry, Mapping):
        return None
    metadata = entry.get("metadata") or {}
    return (metadata.get("kedro-viz") or {}).get("layer")


def find_unnamed_nodes(pipeline: Pipeline) -> list[str]:
    """Return the nodes that have no explicit ``name=``, as Kedro prints them.

    ``Node.short_name`` is the explicit name when there is one and a title-cased
    function name otherwise, so only named nodes have ``name`` equal to it
    (after the namespace prefix).
    """
    unnamed = []
    for node in pipeline.nodes:
        prefix = f"{node.namespace}." if node.namespace else ""
        if node.name != prefix + node.short_name:
            unnamed.append(str(node))
    return unnamed


def find_layer_inversions(pipeline: Pipeline, layers: Mapping[str, str]) -> list[str]:
    """Return the nodes that write a dataset of an earlier layer than one they read.

    Args:
        pipeline: The pipeline to check.
        layers: Dataset name to layer. Datasets without a layer are left out.

    Returns:
        One line per offending node, naming the datasets and layers involved.
    """
    inversions = []
    for node in pipeline.nodes:
        inputs = [(name, layers[name]) for name in node.inputs if name in layers]
        outputs = [(name, layers[name]) for name in node.outputs if name in layers]
        for input_name, input_layer in inputs:
            for output_name, output_layer in outputs:
                if PROJECT_LAYERS.index(output_layer) < PROJECT_LAYERS.index(input_layer):
                    inversions.append(
                        f"{node.name}: reads {input_name} ({input_layer}), writes {output_name} ({output_layer})"
                    )
    return inversions


def registered_pipelines() -> dict[str, Pipeline]:
    """Return every registered pipeline by name, ``__default__`` included."""
    return {name: pipelines[name] for name in pipelines}


def dataset_layers(project: Path, env: str) -> dict[str, str | None]:
    """Resolve the layer of every dataset that a registered pipeline uses.

    Args:
        project: A project folder whose ``conf/local`` is empty.
        env: The configuration environment, merged over ``base``.

    Returns:
        Dataset name to its layer, None where the merged catalog gives it none
        (also for datasets that the catalog does not declare, which Kedro keeps
        in memory).
    """
    loader = settings.CONFIG_LOADER_CLASS(conf_source=str(project / "conf"), env=env, **settings.CONFIG_LOADER_ARGS)
    # Kedro's default pattern, which keeps a dataset that the catalog does not declare in memory.
    resolver = CatalogConfigResolver(
        loader["catalog"], default_runtime_patterns={"{default}": {"type": "kedro.io.MemoryDataset"}}
    )
    names = set()
    for pipeline in registered_pipelines().values():
        names |= pipeline.datasets()
    names = {name for name in names if name != "parameters" and not name.startswith("params:")}
    return {name: declared_layer(resolver.resolve_pattern(name)) for name in sorted(names)}


def test_catalog_files_found():
    assert any(path.parent.name == "base" for path in CATALOG_FILES), "no conf/base/catalog*.yml found"


@pytest.mark.parametrize("path", CATALOG_FILES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_catalog_entry_has_layer(path):
    entries = yaml.safe_load(path.read_text()) or {}
    # Keys starting with "_" are OmegaConf variables, not datasets, and Kedro drops them.
    missing = [name for name, entry in entries.items() if not name.startswith("_") and declared_layer(entry) is None]
    assert not missing, f"{path.relative_to(REPO_ROOT)}: add 'metadata: kedro-viz: layer:' to {missing}"


@pytest.mark.parametrize("path", CATALOG_FILES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_catalog_layer_is_project_layer(path):
    entries = yaml.safe_load(path.read_text()) or {}
    unknown = {
        name: declared_layer(entry)
        for name, entry in entries.items()
        if declared_layer(entry) is not None and declared_layer(entry) not in PROJECT_LAYERS
    }
    assert not unknown, f"{path.relative_to(REPO_ROOT)}: layers {unknown} are not among {PROJECT_LAYERS}"


def test_pipelines_registered(kedro_project):
    names = set(registered_pipelines())
    assert {"__default__", "ingestion", "splits", "segmentation", "reporting"} <= names


def test_nodes_have_explicit_names(kedro_project):
    unnamed = {name: find_unnamed_nodes(pipeline) for name, pipeline in registered_pipelines().items()}
    unnamed = {name: nodes for name, nodes in unnamed.items() if nodes}
    assert not unnamed, f"give these nodes a name= in their pipeline.py: {unnamed}"


def test_node_names_are_snake_case(kedro_project):
    unreadable = sorted(
        node.name
        for pipeline in registered_pipelines().values()
        for node in pipeline.nodes
        if not READABLE_NAME.fullmatch(node.name)
    )
    assert not unreadable, f"node names {unreadable} are not snake_case verb_noun names"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_pipeline_datasets_have_layers(kedro_project, env):
    layers = dataset_layers(kedro_project, env)
    missing = sorted(name for name, layer in layers.items() if layer is None)
    assert layers, "the registered pipelines use no datasets"
    assert not missing, (
        f"env {env}: datasets {missing} have no kedro-viz layer; declare them in conf/base/catalog*.yml "
        "(type kedro.io.MemoryDataset for in-memory ones) with 'metadata: kedro-viz: layer:'"
    )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_layers_follow_data_flow(kedro_project, env):
    layers = dataset_layers(kedro_project, env)
    known = {name: layer for name, layer in layers.items() if layer in PROJECT_LAYERS}
    inversions = find_layer_inversions(registered_pipelines()["__default__"], known)
    assert not inversions, f"env {env}: layers run backwards, so kedro-viz hides all layers: {inversions}"


def _identity(data):
    return data


def test_unnamed_node_detected():
    pipeline = Pipeline(
        [
            Node(_identity, "a", "b", name="copy_a"),
            Node(_identity, "b", "c"),
            Node(_identity, "c", "d", name="copy_c", namespace="inner"),
        ]
    )
    unnamed = find_unnamed_nodes(pipeline)
    assert len(unnamed) == 1
    assert unnamed[0].startswith("_identity([b])")


def test_layer_inversion_detected():
    pipeline = Pipeline(
        [
            Node(_identity, "scan", "table", name="tabulate"),
            Node(_identity, "table", "feature_table", name="derive"),
        ]
    )
    layers = {"scan": "raw", "table": "model_input", "feature_table": "feature"}
    assert find_layer_inversions(pipeline, layers) == [
        "derive: reads table (model_input), writes feature_table (feature)"
    ]


def test_readable_name_pattern():
    assert READABLE_NAME.fullmatch("harmonise_sources")
    assert READABLE_NAME.fullmatch("reporting.export_lungct_multi")
    assert not READABLE_NAME.fullmatch("harmonise_sources__1a2b3c4d")
    assert not READABLE_NAME.fullmatch("Harmonise Sources")
