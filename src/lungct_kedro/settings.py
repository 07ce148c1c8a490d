"""Project settings for Kedro.

Telemetry is switched off in ``.telemetry``; ``KEDRO_DISABLE_TELEMETRY`` is set
by the Makefile as a second guard. ``oc.env`` is registered for every
configuration file so that the real-data environment can read its data folder
from ``LUNGCT_DATA_DIR``.
"""

import warnings

from kedro.config import OmegaConfigLoader
from omegaconf.resolvers import oc

from lungct_kedro.hooks import MlflowTrackingHook
from lungct_kedro.run_context import RunContextHook

# Kedro 1.7 registers its resolvers with a call that OmegaConf now flags as deprecated;
# the message repeats on every command and is not about this project.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "custom_resolvers": {"oc.env": oc.env},
    # Deep-merge parameters and tracking settings so that an environment overrides single keys.
    "merge_strategy": {"parameters": "soft", "tracking": "soft"},
    # MLflow tracking settings (conf/<env>/tracking.yml), read by MlflowTrackingHook.
    "config_patterns": {"tracking": ["tracking*", "tracking*/**", "**/tracking*"]},
}

# RunContextHook records the project path and environment of each run for the report notebooks.
# MlflowTrackingHook logs the training nodes of each run to MLflow (docs/tracking.md).
HOOKS = (RunContextHook(), MlflowTrackingHook())
