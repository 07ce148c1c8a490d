"""The lineage page of a static kedro-viz build, rendered in headless Chromium.

The test builds the page with ``kedro viz build`` in a temporary copy of the
project, serves the build folder from a local ``http.server`` on 127.0.0.1
and reads the DOM that Chromium renders. Nothing is fetched from the network:
the static build skips kedro-viz's PyPI version check, and Chromium resolves no
host names, so the Google Fonts stylesheet linked from kedro-viz's
``index.html`` fails and the page falls back to local fonts.

Chromium must be installed (Debian: ``apt-get install chromium``). Without it
the tests fail, unless ``LUNGCT_SKIP_BROWSER_TESTS=1`` is set, which skips them
for a local run. The screenshot of the whole lineage lands in the test's
temporary folder and, when ``LUNGCT_TEST_ARTIFACTS`` names a folder, is copied
there too.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from kedro.framework.project import pipelines
from kedro.framework.startup import bootstrap_project
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.viz.lineage import PROJECT_LAYERS

pytestmark = pytest.mark.slow

CHROMIUM_COMMANDS = ("chromium", "chromium-browser", "google-chrome")
SKIP_ENV = "LUNGCT_SKIP_BROWSER_TESTS"
ARTIFACTS_ENV = "LUNGCT_TEST_ARTIFACTS"
SCREENSHOT_NAME = "kedro_viz_lineage.png"
WINDOW_SIZE = (1600, 1000)
#: Virtual time for the page to load its JSON and lay out the graph. Chromium fast-forwards idle
#: timers, so a render takes a few seconds of wall time.
VIRTUAL_TIME_MS = 15_000
CHROMIUM_TIMEOUT_S = 90
BUILD_TIMEOUT_S = 180

#: One node per pipeline family, checked even if the registry were to come back empty.
KNOWN_NODES = {
    "ingestion": "harmonise_sources",
    "splits": "check_split_leakage",
    "segmentation": "train_segmentation_model",
    "curation": "compute_quality_metrics",
    "reporting": "export_lungct_multi",
}

#: Path of a page that switches kedro-viz's onboarding hints off in localStorage and
#: then opens the lineage page, so that no popup covers the graph in the screenshot.
HINTS_OFF_PATH = "/__hints_off.html"
HINTS_OFF_PAGE = b"""<!doctype html>
<script>
  localStorage.setItem("KedroViz", JSON.stringify({showFeatureHints: false}));
  location.replace("/" + location.search);
</script>
"""


def find_chromium() -> str:
    """Find the Chromium command on PATH.

    Fails with install instructions when it is missing, or skips when
    ``LUNGCT_SKIP_BROWSER_TESTS=1`` is set.
    """
    for command in CHROMIUM_COMMANDS:
        path = shutil.which(command)
        if path:
            return path
    missing = f"Chromium not found on PATH (tried {', '.join(CHROMIUM_COMMANDS)})"
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{missing}, and {SKIP_ENV}=1 skips the lineage browser tests")
    pytest.fail(
        f"{missing}; the lineage browser tests need it. Install it with `sudo apt-get install chromium` "
        f"on Debian (.ci/run does this), or set {SKIP_ENV}=1 to skip these tests on a local machine."
    )


class LineageDomParser(HTMLParser):
    """Collect the flowchart's node labels and layer labels from a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.task_labels: list[str] = []
        self.data_labels: list[str] = []
        self.layer_labels: list[str] = []
        self._node_kinds: list[str | None] = []
        self._collecting: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "g":
            kind = None
            if "pipeline-node--task" in classes:
                kind = "task"
            elif "pipeline-node--data" in classes:
                kind = "data"
            self._node_kinds.append(kind)
        elif tag == "text" and "pipeline-node__text" in classes:
            current = next((kind for kind in reversed(self._node_kinds) if kind), None)
            self._collecting = {"task": self.task_labels, "data": self.data_labels}.get(current)
            if self._collecting is not None:
                self._collecting.append("")
        elif tag == "li" and "pipeline-layer-name" in classes:
            self._collecting = self.layer_labels
            self._collecting.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "g" and self._node_kinds:
            self._node_kinds.pop()
        elif tag in ("text", "li"):
            self._collecting = None

    def handle_data(self, data: str) -> None:
        if self._collecting is not None:
            self._collecting[-1] += data.strip()


def parse_lineage_dom(dom: str) -> LineageDomParser:
    parser = LineageDomParser()
    parser.feed(dom)
    parser.close()
    return parser


def run_chromium(chromium: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """Render ``url`` in headless Chromium and return the DOM after the virtual time budget.

    Chromium runs in its own session, so its whole process group (browser,
    renderer and helper processes) is killed at the end, also on timeout.
    """
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--no-default-browser-check",
        # Every host name fails to resolve, so only the local server on 127.0.0.1 is reachable.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}",
        "--dump-dom",
    ]
    if screenshot is not None:
        command.append(f"--screenshot={screenshot}")
    command.append(url)

    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"Chromium timed out after {CHROMIUM_TIMEOUT_S} s on {url}")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    if process.returncode != 0:
        pytest.fail(f"Chromium exited with status {process.returncode} on {url}; stderr ends with:\n{stderr[-3000:]}")
    return stdout


@dataclass
class LineageServer:
    """A local static server of a kedro-viz build and the request paths it received."""

    build: Path
    url: str
    requested_paths: list[str]


@dataclass
class RenderedPage:
    dom: LineageDomParser
    screenshot: Path


@pytest.fixture(scope="module")
def chromium() -> str:
    return find_chromium()


@pytest.fixture(scope="module")
def viz_project(tmp_path_factory) -> Path:
    """Copy the project's configuration like ``kedro_project`` does, once for this module.

    Module scope lets one build serve every test here. ``conf/local`` is left
    empty, so the lineage is that of ``conf/base``.
    """
    project = tmp_path_factory.mktemp("viz_project")
    shutil.copytree(REPO_ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    shutil.copy(REPO_ROOT / "pyproject.toml", project / "pyproject.toml")
    (project / "data").mkdir()
    # Kedro's bootstrap checks that a source folder exists; the package itself is installed.
    (project / "src").mkdir()
    bootstrap_project(project)
    return project


@pytest.fixture(scope="module")
def static_build(viz_project) -> Path:
    """Run ``kedro viz build`` in the project copy and return the build folder."""
    kedro = Path(sys.executable).with_name("kedro")
    environment = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [str(kedro), "viz", "build"],
        cwd=viz_project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    build = viz_project / "build"
    if result.returncode != 0 or not (build / "api" / "main").is_file():
        pytest.fail(f"kedro viz build failed with status {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return build


@pytest.fixture(scope="module")
def lineage_server(static_build) -> Iterator[LineageServer]:
    """Serve the build folder on a free port of 127.0.0.1 until the module ends."""
    requested_paths: list[str] = []

    class BuildHandler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requested_paths.append(self.path)
            if self.path.split("?")[0] == HINTS_OFF_PATH:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(HINTS_OFF_PAGE)))
                self.end_headers()
                self.wfile.write(HINTS_OFF_PAGE)
                return
            super().do_GET()

        def log_message(self, format: str, *args) -> None:  # noqa: A002  (signature of the base class)
            pass

    handler = functools.partial(BuildHandler, directory=str(static_build))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LineageServer(static_build, f"http://127.0.0.1:{server.server_address[1]}", requested_paths)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def default_page(chromium, lineage_server, tmp_path_factory) -> RenderedPage:
    """Render the lineage of every pipeline (``__default__``) and keep its screenshot."""
    folder = tmp_path_factory.mktemp("lineage_page")
    screenshot = folder / SCREENSHOT_NAME
    dom = run_chromium(chromium, lineage_server.url + HINTS_OFF_PATH, folder / "profile", screenshot)

    artifacts = os.environ.get(ARTIFACTS_ENV)
    if artifacts and screenshot.is_file():
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / SCREENSHOT_NAME)
    return RenderedPage(parse_lineage_dom(dom), screenshot)


def registered_node_names() -> dict[str, set[str]]:
    return {name: {node.name for node in pipelines[name].nodes} for name in pipelines}


def test_build_has_every_pipeline(static_build, viz_project):
    main = json.loads((static_build / "api" / "main").read_text())
    built = {pipeline["id"] for pipeline in main["pipelines"]}
    registered = set(pipelines)
    assert registered <= built
    for name in registered - {"__default__"}:
        assert (static_build / "api" / "pipelines" / name).is_file(), f"no api/pipelines/{name} in the build"


def test_page_fetched_local_data(default_page, lineage_server):
    assert "/api/main" in lineage_server.requested_paths


def test_page_shows_known_nodes(default_page):
    missing = {pipeline: node for pipeline, node in KNOWN_NODES.items() if node not in default_page.dom.task_labels}
    assert not missing, f"nodes missing from the rendered flowchart: {missing}"


def test_page_shows_every_registered_node(default_page, viz_project):
    expected = set().union(*registered_node_names().values())
    missing = sorted(expected - set(default_page.dom.task_labels))
    assert expected
    assert not missing, f"registered nodes missing from the rendered flowchart: {missing}"


def test_page_shows_every_dataset(default_page, viz_project):
    expected = {
        name
        for name in pipelines["__default__"].datasets()
        if name != "parameters" and not name.startswith("params:")
    }
    missing = sorted(expected - set(default_page.dom.data_labels))
    assert not missing, f"datasets missing from the rendered flowchart: {missing}"


def test_page_shows_layers_in_project_order(default_page):
    layers = default_page.dom.layer_labels
    assert {"raw", "primary", "model_input", "reporting"} <= set(layers), f"layer bands shown: {layers}"
    assert layers == sorted(layers, key=PROJECT_LAYERS.index)


def test_screenshot_kept(default_page):
    assert default_page.screenshot.is_file()
    with Image.open(default_page.screenshot) as image:
        assert image.size == WINDOW_SIZE
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    # A page that failed to render is one flat colour.
    assert pixels.std() > 10.0
    artifacts = os.environ.get(ARTIFACTS_ENV)
    if artifacts:
        assert (Path(artifacts) / SCREENSHOT_NAME).is_file()


def test_pipeline_page_shows_only_its_nodes(chromium, lineage_server, viz_project, tmp_path):
    dom = parse_lineage_dom(run_chromium(chromium, lineage_server.url + "/?pid=segmentation", tmp_path / "profile"))
    expected = registered_node_names()["segmentation"]
    assert set(dom.task_labels) == expected
    assert KNOWN_NODES["ingestion"] not in dom.task_labels
