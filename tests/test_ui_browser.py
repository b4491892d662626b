"""The Prefect UI path in a real browser (headless Chromium from the Debian packages, driven by
Playwright), on loopback only.

`nlfpipe stack up --test-models` brings up the services, the Prefect server, the deployments and
a worker; the deployment is triggered with subject selection in the UI; the Resume dialog must
show the candidates image (loaded with HTTP 200) and take a candidate number; every link of the
results artifact must answer 200.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.s3 import free_port
from tests.support.videos import make_test_video

pytestmark = pytest.mark.slow

STAGES = "ingest,tracking,pose,fitting"
#: A static camera at the source frame rate without rendering needs exactly STAGES.
RUN_PARAMS = {"subjects": {"in_ui": True}, "static_camera": True, "fps_factor": 1,
              "renderer": "none"}  # fmt: skip
FIGURES = 2


def _chromium() -> str:
    """The Debian package's Chromium (Playwright is pointed at it: nothing is downloaded)."""
    try:
        import playwright  # noqa: F401 - only checked for
    except ImportError:
        pytest.fail("Playwright is missing: `make setup` installs it (the `dev` extras)")
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "Chromium is missing: install the Debian package `chromium` "
            "(`make setup` runs scripts/system_packages.sh, which installs it)"
        )
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`nlfpipe stack up` with test models on free ports; `stack down` afterwards."""
    _chromium()  # before minutes of start-up
    root = tmp_path_factory.mktemp("ui")
    state = root / "state"
    port = free_port()
    nlfpipe = str(Path(sys.executable).with_name("nlfpipe"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NLFPIPE_"))}
    up = subprocess.run(
        [nlfpipe, "stack", "up", "--stages", STAGES, "--test-models", "--state-dir", str(state),
         "--prefect-port", str(port)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "export INGEST_ADDR=127.0.0.1:" in up.stdout
        video = root / "two-people.mp4"
        make_test_video(video, seconds=1.0, figures=FIGURES)
        yield {"api": f"http://127.0.0.1:{port}/api", "ui": f"http://127.0.0.1:{port}",
               "video": video, "state": state}  # fmt: skip
    finally:
        subprocess.run([nlfpipe, "stack", "down", "--state-dir", str(state)], env=env,
                       capture_output=True, timeout=60)  # fmt: skip


def _wait_state(client, run_id, done, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while not done(state := client.read_flow_run(run_id).state):
        assert not state.is_final(), f"the run ended early: {state.type} {state.message}"
        assert time.monotonic() < deadline, f"still {state.type} after {timeout_s:.0f} s"
        time.sleep(0.5)
    return state


def test_choose_people_in_the_resume_dialog_and_open_the_results(stack):
    chromium = _chromium()
    from playwright.sync_api import expect, sync_playwright
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack["api"]}), get_client(sync_client=True) as api:
        run = run_deployment(
            "process-video/process-video-local",
            parameters={"params": {"video": str(stack["video"]), **RUN_PARAMS}},
            timeout=0,
        )
        _wait_state(api, run.id, lambda s: s.is_paused(), timeout_s=90)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            images = {}
            page.on("response", lambda r: images.setdefault(r.url, r.status))
            page.goto(f"{stack['ui']}/runs/flow-run/{run.id}")
            page.get_by_role("button", name="Resume").first.click()
            dialog = page.get_by_role("dialog")
            picture = dialog.locator("img[alt='Candidates on the init frame']")
            picture.wait_for(timeout=20_000)
            src = picture.get_attribute("src")
            assert src.startswith("http://127.0.0.1:")
            page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                   arg=picture.element_handle(), timeout=20_000)  # fmt: skip
            assert images.get(src) == 200, images
            assert dialog.get_by_text(f"Choose the people to track ({FIGURES} candidates)")
            assert dialog.locator("table tr").count() == 1 + FIGURES

            dialog.get_by_role("button", name="Add item").click()
            number = dialog.locator("input[type='number']").first
            number.fill("1")
            expect(number).to_have_value("1")
            dialog.get_by_role("button", name="Submit").click()
            expect(dialog).to_be_hidden(timeout=30_000)  # the resume was sent
            state = _wait_state(api, run.id, lambda s: s.is_final(), timeout_s=90)
            assert state.is_completed(), state.message

            artifacts = api.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            summary = next(a for a in artifacts if (a.key or "").startswith("run-summary"))
            assert "**People found:** 1" in summary.data
            results = next(a for a in artifacts if (a.key or "").startswith("run-results"))
            page.goto(f"{stack['ui']}/artifacts/artifact/{results.id}")
            links = page.locator("a[href^='http://127.0.0.1:']")
            links.first.wait_for(timeout=20_000)
            hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
            names = [h.split("?")[0].rsplit("/", 1)[1] for h in hrefs]
            assert "ingest-video.mp4" in names and "fitting-fits.npz" in names, names
            assert all(f"/results/{stack['video'].stem}-" in h for h in hrefs), hrefs  # stem-digest
            statuses = {n: page.request.get(h).status for n, h in zip(names, hrefs, strict=True)}
            assert set(statuses.values()) == {200}, statuses
            browser.close()
