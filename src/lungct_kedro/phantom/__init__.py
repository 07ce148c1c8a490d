"""Synthetic chest CT phantom, the default data source when no data is declared."""

from lungct_kedro.phantom.generator import PhantomPatient, generate_phantom_slices, render_phantom_patient
from lungct_kedro.phantom.params import DEFAULT, validate_phantom_params

__all__ = [
    "DEFAULT",
    "PhantomPatient",
    "generate_phantom_slices",
    "render_phantom_patient",
    "validate_phantom_params",
]
