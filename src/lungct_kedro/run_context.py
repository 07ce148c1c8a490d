"""The project path, environment and runtime parameters of the Kedro run in progress.

Nodes receive data and parameters only. The report notebooks, though, open
their own Kedro session in a Jupyter kernel and must see the configuration
of the run that executes them. ``RunContextHook`` records it before each run
and ``current_run`` returns it to the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl


@dataclass(frozen=True)
class KedroRun:
    """The project path, environment and runtime parameters of a Kedro run.

    Attributes:
        project_path: The Kedro project root.
        env: The configuration environment, or ``None`` for the default one.
        runtime_params: Parameters given on the command line (``--params``).
    """

    project_path: Path
    env: str | None
    runtime_params: dict[str, Any] = field(default_factory=dict)


_active_run: KedroRun | None = None


class RunContextHook:
    """Record the project path, environment and runtime parameters of each run.

    Registered in ``settings.HOOKS``. The record lives in this process, so it
    reaches nodes of the sequential and thread runners, and of the parallel
    runner only where worker processes are forked.
    """

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        global _active_run
        _active_run = KedroRun(
            project_path=Path(run_params["project_path"]),
            env=run_params.get("env"),
            runtime_params=dict(run_params.get("runtime_params") or {}),
        )

    @hook_impl
    def after_pipeline_run(self) -> None:
        global _active_run
        _active_run = None

    @hook_impl
    def on_pipeline_error(self) -> None:
        global _active_run
        _active_run = None


def current_run() -> KedroRun:
    """Return the Kedro run in progress.

    Raises:
        RuntimeError: No run is in progress, or ``RunContextHook`` is not
            registered in ``settings.HOOKS``.
    """
    if _active_run is None:
        raise RuntimeError(
            "no Kedro run in progress is recorded. Run this node through `kedro run`, and check that "
            "src/lungct_kedro/settings.py lists lungct_kedro.run_context.RunContextHook() in HOOKS"
        )
    return _active_run
