"""Tests of the kedro-viz lineage: names, layers and the rendered page."""
