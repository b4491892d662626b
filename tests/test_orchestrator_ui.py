"""What the Prefect UI shows, without a browser: store links over HTTP, the Resume dialog's
candidates, the results table, readable progress, run names, and a fast failure when no
service answers."""

import logging
import time
import urllib.error
import urllib.request
from datetime import datetime

import pytest

from orchestrator import flow as flow_module
from orchestrator import stage_tasks, tasks
from orchestrator.artifacts import (
    STORE_HTTP_ENV,
    browser_link,
    candidates_markdown,
    copy_into_results,
    human_size,
    results_markdown,
)
from orchestrator.outcome import ArtifactRefModel, StageOutcome
from orchestrator.run_names import is_generated_name, video_run_name
from orchestrator.store_http import serve_in_thread
from orchestrator.summary import RunSummary
from services.common.store import LocalFolderStore

CANDIDATES = {
    "init_frame": 30,
    "init_time_seconds": 1.0,
    "candidates": [
        {"index": 0, "score": 0.97, "box_xywh": [10.4, 20, 50, 120.6], "area_px": 4100},
        {"index": 1, "score": 0.5, "box_xywh": [200, 22, 40, 100], "area_px": 2900.7},
    ],
}


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A local store served read-only over loopback HTTP; links point at it."""
    store = LocalFolderStore(tmp_path / "store")
    server, url = serve_in_thread(store.root)
    monkeypatch.setenv(STORE_HTTP_ENV, url)
    yield store, url
    server.shutdown()
    server.server_close()


def _get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), b""


def test_store_http_serves_objects_with_their_media_type_and_nothing_else(served, tmp_path):
    store, url = served
    info = store.put_bytes("stages/tracking/abc/candidates_preview", b"\x89PNG-bytes", "image/png")
    (tmp_path / "secret.txt").write_text("outside the store")

    link = browser_link(store, info.uri, "candidates.png")
    assert link == f"{url}/stages/tracking/abc/candidates_preview?name=candidates.png"
    status, headers, body = _get(link)
    assert (status, headers["Content-Type"], body) == (200, "image/png", b"\x89PNG-bytes")
    assert headers["Content-Length"] == "10"
    assert "candidates.png" in headers["Content-Disposition"]

    store.put_bytes("results/walk/render-camera_view.mp4", b"mp4", "application/octet-stream")
    assert _get(f"{url}/results/walk/render-camera_view.mp4")[1]["Content-Type"] == "video/mp4"
    for hidden in ("/.meta/stages/tracking/abc/candidates_preview.json", "/../secret.txt",
                   "/%2e%2e/secret.txt", "/stages/tracking/nothing", "/"):  # fmt: skip
        assert _get(url + hidden)[0] == 404, hidden
    request = urllib.request.Request(link, method="PUT", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 501


def test_no_link_without_a_store_server(tmp_path, monkeypatch):
    monkeypatch.delenv(STORE_HTTP_ENV, raising=False)
    store = LocalFolderStore(tmp_path / "store")
    assert browser_link(store, store.put_bytes("a/b", b"x", "image/png").uri) is None
    assert "No browser links" in results_markdown(
        [{"label": "A", "file": "a.png", "link": None, "size_bytes": 1}]
    )


def test_candidates_markdown_has_the_image_a_table_and_the_error():
    text = candidates_markdown(CANDIDATES, "http://127.0.0.1:1/p?name=c.png", "7: not a candidate")
    assert text.startswith("**7: not a candidate**")
    assert "## Choose the people to track (2 candidates)" in text
    assert "![Candidates on the init frame](http://127.0.0.1:1/p?name=c.png)" in text
    assert "| 0 | 0.97 | 10, 20, 50, 121 | 4100 |" in text
    assert "| 1 | 0.50 | 200, 22, 40, 100 | 2900 |" in text
    assert "No people were found" in candidates_markdown({"candidates": []}, None)


def test_subject_choice_form_limits_numbers_to_the_candidates():
    schema = flow_module.subject_choice_form(3).model_json_schema()
    items = schema["properties"]["indices"]["items"]
    assert (items["minimum"], items["maximum"]) == (0, 2)
    assert schema["properties"]["indices"]["title"] == "People to track"
    assert flow_module.not_candidates([0, 2], 3) == ""
    assert flow_module.not_candidates([5], 3) == "5: not a candidate; choose from 0 to 2"
    assert "repeats" in flow_module.not_candidates([1, 1], 3)


def test_a_number_that_is_not_a_candidate_asks_again_with_the_error(monkeypatch):
    answers = iter([[7], [1]])
    asked = []

    def pause(form):
        asked.append(form._description)
        return _Choice(next(answers))

    monkeypatch.setattr(flow_module, "_pause_for", pause)
    monkeypatch.setattr(stage_tasks, "show_candidates", lambda p: (CANDIDATES, "http://x/p"))
    monkeypatch.setattr(flow_module, "get_run_logger", lambda: logging.getLogger("test"))
    selection, waited = flow_module.ask_for_subjects(StageOutcome(stage="tracking"))
    assert selection.indices == [1]
    assert len(asked) == 2 and waited >= 0.0
    assert "not a candidate" not in asked[0] and "![Candidates" in asked[0]
    assert asked[1].startswith("**7: not a candidate; choose from 0 to 1**")


class _Choice:
    def __init__(self, indices):
        self.indices = indices


def test_results_are_copied_under_the_results_prefix_with_file_names(served, monkeypatch):
    store, url = served
    video = store.put_bytes("stages/render/k1/camera_view", b"v" * 2500, "video/mp4")
    glb = store.put_bytes("stages/render/k1/exports/scene.glb", b"g", "model/gltf-binary")
    summary = RunSummary(video="/data/walk.mp4", stages=[StageOutcome(stage="render", outputs={
        "camera_view": ArtifactRefModel(uri=video.uri, media_type="video/mp4", size_bytes=2500),
        "exports_scene.glb": ArtifactRefModel(uri=glb.uri, media_type="model/gltf-binary",
                                              size_bytes=1),
    })])  # fmt: skip
    monkeypatch.setattr(stage_tasks, "flow_store", lambda: store)
    rows = stage_tasks.publish_results(summary, "results/walk")
    assert [r["file"] for r in rows] == ["render-camera_view.mp4", "render-exports_scene.glb"]
    assert rows[0]["label"] == "Camera-view video of the meshes"
    name = "render-camera_view.mp4"
    assert rows[0]["link"] == f"{url}/results/walk/{name}"
    assert store.get_bytes("results/walk/render-camera_view.mp4") == b"v" * 2500
    table = results_markdown(rows)
    assert f"| Camera-view video of the meshes | [{name}]({rows[0]['link']}) | 2.5 KB |" in table
    assert [_get(row["link"])[0] for row in rows] == [200, 200]
    assert _get(rows[0]["link"])[1]["Content-Type"] == "video/mp4"
    again = copy_into_results(store, video.uri, "results/walk", "render-camera_view.mp4",
                              "video/mp4")  # fmt: skip
    assert again == store.uri("results/walk/render-camera_view.mp4")
    assert human_size(999) == "999 B" and human_size(1_500_000) == "1.5 MB"


def test_progress_text_is_rounded_and_counts_what_the_stage_processes():
    assert tasks.progress_text("pose", 24, 60, "estimating poses") == (
        "pose: 40% (24/60) estimating poses"
    )
    from services.tracking.propagation import pass_progress

    message = pass_progress(1350 + 400, 1350, 2)
    assert message == "pass 2/2, frame 400/1350"
    assert tasks.progress_text("tracking", 1750, 2700, message) == (
        "tracking: 65% pass 2/2, frame 400/1350"
    )
    assert tasks.progress_text("ingest", 0, 0, "probing") == "ingest: probing"


def test_run_names_keep_typed_names_and_default_to_the_video_and_a_time():
    from prefect.utilities.names import generate_slug

    assert all(is_generated_name(generate_slug(2)) for _ in range(200))
    assert not is_generated_name("walk-test") and not is_generated_name("Morning run")
    assert video_run_name("/data/walk.mp4", datetime(2026, 3, 4, 5, 6, 7)) == "walk-0304-050607"


def test_a_stage_without_a_service_fails_in_seconds_naming_the_address(monkeypatch):
    monkeypatch.delenv("POSE_ADDR", raising=False)
    started = time.monotonic()
    with pytest.raises(tasks.StageCallError) as failed:
        tasks.require_reachable("pose", "127.0.0.1:9", grace_s=0.5)
    assert time.monotonic() - started < 5
    assert not failed.value.transient
    message = str(failed.value)
    assert "no pose service answers at 127.0.0.1:9" in message
    assert "POSE_ADDR is not set" in message and "nlfpipe stack up" in message


def _walk(schema: dict):
    """Every (name, property schema) of a parameter schema, nested models included."""
    for definition in [schema, *schema.get("definitions", {}).values()]:
        yield from definition.get("properties", {}).items()


@pytest.mark.parametrize("flow_fn", ["process_video", "process_videos"])
def test_the_run_forms_speak_to_people_and_constrain_values(flow_fn):
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(getattr(flow_module, flow_fn)).model_dump()
    text = str(schema)
    for jargon in ("run_all", "NlfOptions", "SubjectSelection", "reference"):
        assert jargon not in str([p.get("title", "") + p.get("description", "")
                                  for _, p in _walk(schema)]), jargon  # fmt: skip
    props = dict(_walk(schema))
    assert "anyOf" not in text, "optional fields must be typeable without a type tab"
    assert props["time_range"]["default"] == "" and "pattern" in props["time_range"]
    assert props["seg_init_time"]["title"] == "Tracking start time"
    assert props["fov_deg"]["title"] == "Field of view (degrees)"
    assert (props["fov_deg"]["minimum"], props["fov_deg"]["exclusiveMaximum"]) == (0, 179)
    assert props["in_ui"]["title"] == "Select subjects in the UI"
    assert props["fps_factor"]["enum"] == [0, 1, 2]
    assert props["renderer"]["enum"] == ["opengl", "none"]
    assert props["num_aug"]["maximum"] == 20 and props["max_persons"]["minimum"] == -1
    definitions = schema["definitions"]
    for definition in definitions.values():  # a reference's title is its definition's
        for name, prop in definition["properties"].items():
            title = prop.get("title") or definitions[prop["$ref"].rsplit("/", 1)[1]]["title"]
            assert title[0].isupper() or name in {"x", "y"}, (name, title)
    assert definitions["SubjectSelection"]["title"] == "Subjects"
    assert definitions["NlfOptions"]["title"] == "Pose model"


@pytest.mark.parametrize(
    ("value", "ok"),
    [("", True), ("00:45-01:25", True), ("5-7.5", True), ("1:02:03-1:02:09", True),
     ("00:45", False), ("a-b", False), ("1-2-3", False)],
)  # fmt: skip
def test_the_time_range_pattern_agrees_with_the_parser(value, ok):
    import re

    from orchestrator.params import TIME_RANGE_PATTERN, parse_time_range

    assert bool(re.match(TIME_RANGE_PATTERN, value)) is ok
    if ok and value:
        parse_time_range(value)


def test_a_stage_error_state_is_raised_and_logged_once():
    from prefect.states import Failed

    from orchestrator.run_log import DropReportedTracebacks

    error = tasks.StageCallError("ingest", "INVALID_ARGUMENT", "time_range starts past the end")
    call = tasks.StageCall(lambda *a: Failed(message=str(error), data=error))
    with pytest.raises(tasks.StageCallError, match="starts past the end"):
        call("params")
    assert tasks.StageCall(lambda x: x + 1)(1) == 2

    def record(message: str, exc: BaseException) -> logging.LogRecord:
        return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, message, (),
                                 (type(exc), exc, None))  # fmt: skip

    keep = DropReportedTracebacks().filter
    assert not keep(record("Engine execution exited with unexpected exception", error))
    assert keep(record("Engine execution exited with unexpected exception", KeyError("x")))
    assert keep(record("stage failed: ingest failed", error))


def test_s3_links_are_presigned_for_the_endpoint_a_browser_reaches(s3_store, monkeypatch):
    from urllib.parse import urlsplit

    from tests.support.s3 import s3_env

    endpoint = s3_store.client._base_url.host
    for name, value in s3_env(endpoint, s3_store.bucket).items():
        monkeypatch.setenv(name, value)
    info = s3_store.put_bytes("results/walk/fitting-fits.npz", b"npz", "application/x-npz")
    monkeypatch.delenv("NLFPIPE_S3_PUBLIC_ENDPOINT", raising=False)
    link = browser_link(s3_store, info.uri, "fitting-fits.npz")
    status, headers, body = _get(link)
    assert (status, body) == (200, b"npz")
    assert "fitting-fits.npz" in headers["Content-Disposition"]
    monkeypatch.setenv("NLFPIPE_S3_PUBLIC_ENDPOINT", "127.0.0.1:9")
    assert urlsplit(browser_link(s3_store, info.uri)).netloc == "127.0.0.1:9"
