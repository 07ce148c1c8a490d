"""Constants shared by the lineage tests."""

#: Kedro's data layers in the order data flows through them (``data/01_raw`` … ``data/08_reporting``).
PROJECT_LAYERS = (
    "raw",
    "intermediate",
    "primary",
    "feature",
    "model_input",
    "models",
    "model_output",
    "reporting",
)
