"""Stage-call plumbing without the Prefect engine: retry decisions, results, addresses, summary."""

import pickle

import grpc
import pytest

from nlfpipe.common.v1 import common_pb2
from orchestrator import progress
from orchestrator.outcome import StageOutcome, outcome_from_result
from orchestrator.summary import RunSummary, markdown, people_in
from orchestrator.tasks import (
    GPU_TAG_PREFIX,
    StageCallError,
    is_transient,
    retry_on_transient,
    stage_address,
    stage_deadline_s,
    stage_tags,
)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = ""):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class FailedState:
    """Stands in for a Prefect state whose result() re-raises the task's exception."""

    def __init__(self, exc: BaseException | None):
        self.exc = exc

    def result(self):
        if self.exc is not None:
            raise self.exc
        return "ok"


@pytest.mark.parametrize(
    ("code", "retried"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.NOT_FOUND, False),
        (grpc.StatusCode.FAILED_PRECONDITION, False),
        (grpc.StatusCode.INTERNAL, False),
        (grpc.StatusCode.CANCELLED, False),
    ],
)
def test_retry_only_on_transient_codes(code, retried):
    assert retry_on_transient(None, None, FailedState(FakeRpcError(code))) is retried
    wrapped = StageCallError("pose", code.name, "details")
    assert retry_on_transient(None, None, FailedState(wrapped)) is retried
    assert is_transient(wrapped) is retried


def test_no_retry_on_other_errors_or_success():
    assert retry_on_transient(None, None, FailedState(ValueError("bad"))) is False
    assert retry_on_transient(None, None, FailedState(None)) is False


def test_stage_call_error_pickles_and_names_the_stage():
    err = StageCallError("tracking", "INVALID_ARGUMENT", "max_persons: must be >= 1")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == "tracking failed with INVALID_ARGUMENT: max_persons: must be >= 1"
    assert again.transient is False


def test_address_deadline_and_tags(monkeypatch):
    monkeypatch.delenv("POSE_ADDR", raising=False)
    assert stage_address("pose") == "127.0.0.1:50055"
    monkeypatch.setenv("POSE_ADDR", "pose:6000")
    assert stage_address("pose") == "pose:6000"
    monkeypatch.delenv("NLFPIPE_POSE_DEADLINE_S", raising=False)
    assert stage_deadline_s("pose", video_seconds=20) == pytest.approx(600 + 20 * 60)
    monkeypatch.setenv("NLFPIPE_POSE_DEADLINE_S", "42")
    assert stage_deadline_s("pose", video_seconds=20) == 42
    assert stage_tags("pose") == [GPU_TAG_PREFIX + "pose"]
    assert stage_tags("fitting") == []


def test_outcome_keeps_references_and_summary():
    ref = common_pb2.ArtifactRef(uri="s3://b/stages/pose/k/predictions.bcz", sha256="ab" * 32)
    summary = common_pb2.StageSummary(
        cache_hit=True, cache_key="k", compute_seconds=0.0, counts={"tracks": 2.0, "frames": 60},
        manifest=common_pb2.ArtifactRef(uri="s3://b/stages/pose/k/manifest.json"),
    )
    # A RunResult-shaped message: any message with ArtifactRef fields and a StageSummary.
    result = common_pb2.StageSummary(manifest=ref)
    outcome = outcome_from_result("pose", result, wall_seconds=0.5)
    assert outcome.outputs["manifest"].uri == ref.uri
    assert outcome.ref("manifest") == ref
    with pytest.raises(KeyError, match="has no output 'fits'"):
        outcome.ref("fits")
    outcome = StageOutcome(stage="tracking", cache_hit=summary.cache_hit, counts=summary.counts)
    assert people_in(outcome) == 2


def test_summary_markdown_lists_stages_and_links():
    stages = [
        StageOutcome(stage="ingest", compute_seconds=1.5, wall_seconds=1.7, counts={"frames": 60},
                     outputs={"video": {"uri": "s3://b/v.mp4"}}),
        StageOutcome(stage="tracking", cache_hit=True, counts={"tracks": 2}),
    ]
    summary = RunSummary(video="clip.mp4", stages=stages, people_found=2, frames=60)
    text = markdown(summary, "## Results\n| x |")
    assert "| ingest | computed | 1.50 | 1.70 | 1 | frames=60 |" in text
    assert "| tracking | cache hit |" in text
    assert "**People found:** 2" in text
    assert text.endswith("## Results\n| x |") and "**Waiting for you:** 0.0 s" in text
    assert summary.cache_hits == 1
    assert summary.compute_seconds == pytest.approx(1.5)


def test_progress_listeners_get_events_and_cannot_break_the_stage():
    seen = []

    def broken(event):
        raise RuntimeError("display gone")

    progress.add_listener(broken)
    progress.add_listener(seen.append)
    try:
        progress.emit("pose", 3, 10, "frames")
    finally:
        progress.remove_listener(broken)
        progress.remove_listener(seen.append)
    assert [(e.stage, e.done, e.total) for e in seen] == [("pose", 3, 10)]


def test_prefect_yaml_deployments_point_at_the_flows():
    import importlib
    from pathlib import Path

    import yaml
    from prefect.flows import Flow

    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "prefect.yaml").read_text())
    names = {d["name"]: d for d in config["deployments"]}
    assert set(names) == {
        "process-video-local", "process-videos-local", "process-video-k8s", "process-videos-k8s"
    }
    for deployment in names.values():
        path, func = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert isinstance(getattr(module, func), Flow)
        pool = deployment["work_pool"]["name"]
        assert pool == ("nlfpipe-k8s" if deployment["name"].endswith("k8s") else "nlfpipe-local")
    flow_lines = (repo / "orchestrator" / "flow.py").read_text().splitlines()
    assert "from __future__ import annotations" not in flow_lines, "breaks UI-triggered runs"


def test_batch_sources_from_a_list_a_folder_and_a_store_prefix(tmp_path, monkeypatch):
    from orchestrator.params import ParameterError
    from orchestrator.stage_tasks import flow_store, list_videos

    monkeypatch.setenv("NLFPIPE_STORE", "local")
    monkeypatch.setenv("NLFPIPE_STORE_ROOT", str(tmp_path / "store"))
    folder = tmp_path / "videos"
    (folder / "day2").mkdir(parents=True)
    for name in ("a.mp4", "day2/b.MOV", "notes.txt"):
        (folder / name).write_bytes(b"x")
    store = flow_store()
    for key in ("uploads/c.mp4", "uploads/d.txt", "other/e.mp4"):
        store.put_bytes(key, b"x", "video/mp4")
    sources = list_videos(["dQw4w9WgXcQ"], str(folder), "uploads/")
    assert sources == [
        "dQw4w9WgXcQ",
        str(folder / "a.mp4"),
        str(folder / "day2" / "b.MOV"),
        store.uri("uploads/c.mp4"),
    ]
    with pytest.raises(ParameterError, match="folder"):
        list_videos([], str(tmp_path / "nope"), None)
    with pytest.raises(ParameterError, match="no videos"):
        list_videos([], None, None)
