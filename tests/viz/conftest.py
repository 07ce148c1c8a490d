"""Fixtures of the lineage tests, shared with the pipeline tests."""

from tests.pipelines.conftest import kedro_project  # noqa: F401  (re-exported fixture)
