"""The ingest stage run: fetch and hash the source, then (unless cached) probe, plan, normalize.

The cache key covers the source bytes (the store object's digest, or the sha256 of the local
or downloaded file), the time range (canonical seconds) and max_height.
"""

import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

from services.common.errors import Cancelled, InvalidInput
from services.common.formats.video import MEDIA_TYPE, VIDEO_MEDIA_TYPE, ProbeInfo
from services.common.stagerun import (
    OutputFile,
    Progress,
    StageOutputs,
    StageResult,
    StageRun,
    run_stage,
)
from services.common.store import ArtifactStore
from services.ingest.normalize import NormalizationPlan, normalize_video, plan_normalization
from services.ingest.probe import probe_video
from services.ingest.sources import FetchedSource, classify_source, fetch_source
from services.ingest.timerange import TimeRange, parse_time_range

STAGE = "ingest"
VERSION = "1"
DEFAULT_MAX_HEIGHT = 1080
MIN_MAX_HEIGHT = 16


@dataclass(frozen=True)
class IngestRequest:
    """A validated ingest request."""

    source: str
    time_range: TimeRange | None
    max_height: int
    force: bool = False


@dataclass(frozen=True)
class IngestResult:
    """The stage result plus what the caller shows: output and source probes, re-encoded or not."""

    stage: StageResult
    probe: ProbeInfo
    source_probe: ProbeInfo
    reencoded: bool
    reasons: tuple[str, ...]


def make_request(source: str, time_range: str, max_height: int, force: bool) -> IngestRequest:
    """Validates raw request fields (0 max_height = default); InvalidInput names the field."""
    if max_height == 0:
        max_height = DEFAULT_MAX_HEIGHT
    if max_height < MIN_MAX_HEIGHT:
        raise InvalidInput(f"max_height {max_height} is too small: give at least {MIN_MAX_HEIGHT}")
    return IngestRequest(source.strip(), parse_time_range(time_range), max_height, force)


def _params(request: IngestRequest, fetched: FetchedSource) -> dict:
    params: dict = {"max_height": request.max_height, "time_range": None}
    if request.time_range is not None:
        params["time_range"] = [request.time_range.start_s, request.time_range.end_s]
    if fetched.artifact is None:
        params["source_sha256"] = fetched.sha256
    return params


def compute_ingest(
    run: StageRun, *, source: Path | None, name: str, request: IngestRequest
) -> StageOutputs:
    """Probes, plans and normalizes one source into `video` and `probe` outputs."""
    source = source or run.inputs["source"]
    with run.step("probe"):
        source_probe = probe_video(source, name)
        plan = plan_normalization(source_probe, request.time_range, request.max_height)
    video = run.workdir / "video.mp4"
    with run.step("encode" if plan.reencode else "copy"):
        normalize_video(source, video, source_probe, plan, run.progress, name)
    with run.step("probe_output"):
        upright = probe_video(video, "the normalized video").info
    _check_output(upright, plan)
    # The frames are upright; the probe records the rotation that was applied (docs/formats.md).
    probe = replace(upright, rotation_deg=source_probe.info.rotation_deg)
    probe_path = run.workdir / "probe.json"
    probe.save(probe_path)
    return StageOutputs(
        files={
            "video": OutputFile(video, VIDEO_MEDIA_TYPE),
            "probe": OutputFile(probe_path, MEDIA_TYPE),
        },
        counts={"frames": probe.frame_count, "source_frames": source_probe.info.frame_count},
        extra={
            "source": name,
            "source_probe": asdict(source_probe.info),
            "reencoded": plan.reencode,
            "reasons": list(plan.reasons),
            "first_source_frame": plan.first_frame,
        },
    )


def _check_output(probe: ProbeInfo, plan: NormalizationPlan) -> None:
    if probe.frame_count != plan.frame_count:
        raise RuntimeError(
            f"normalization produced {probe.frame_count} frames instead of {plan.frame_count}"
        )


def run_ingest(
    store: ArtifactStore,
    request: IngestRequest,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> IngestResult:
    """Runs the ingest stage for one request (cached when the same source and options ran)."""

    def on_bytes(done: int, total: int) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled("the call was cancelled")
        if on_progress is not None:
            on_progress(Progress(done, total, "downloading (bytes)", "download"))

    source = classify_source(request.source, store)
    with tempfile.TemporaryDirectory(prefix="nlfpipe-ingest-src-") as tmp:
        fetched = fetch_source(source, store, Path(tmp), request.max_height, on_bytes)
        inputs = {"source": fetched.artifact} if fetched.artifact is not None else {}
        result = run_stage(
            store,
            stage=STAGE,
            version=VERSION,
            inputs=inputs,
            params=_params(request, fetched),
            compute=partial(compute_ingest, source=fetched.path, name=source.text, request=request),
            force=request.force,
            on_progress=on_progress,
            cancel=cancel,
        )
    extra = result.extra
    return IngestResult(
        stage=result,
        probe=ProbeInfo.from_json(store.get_bytes(result.outputs["probe"].key).decode()),
        source_probe=ProbeInfo(**extra["source_probe"]),
        reencoded=extra["reencoded"],
        reasons=tuple(extra["reasons"]),
    )
