"""The stage tasks of the flow (one per stage RPC) and the flow's small store helpers.

Each task builds its stage's request from references and parameters and calls
`call_stage_rpc`; requests carry artifact references only, never data.
"""

import json
import os
from functools import cache
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_image_artifact
from prefect.cache_policies import NO_CACHE

from orchestrator.artifacts import (
    browser_link,
    copy_into_results,
    output_label,
    read_candidates,
)
from orchestrator.outcome import StageOutcome
from orchestrator.params import (
    ParameterError,
    SubjectSelection,
    VideoKind,
    VideoParams,
)
from orchestrator.results import result_file_name
from orchestrator.summary import RunSummary
from orchestrator.tasks import call_stage_rpc, stage_task
from services.common.formats.video import ProbeInfo
from services.common.settings import load_settings
from services.common.store import ArtifactStore, LocalFolderStore, open_store

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


@cache
def _store_for(settings_key: tuple) -> ArtifactStore:
    return open_store(load_settings())


def flow_store() -> ArtifactStore:
    """The artifact store the services use (same NLFPIPE_STORE* environment)."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("NLFPIPE_")))
    return _store_for(env)


# ---------------------------------------------------------------------------------------------
# sources


@task(name="resolve-source", persist_result=False, cache_policy=NO_CACHE)
def resolve_source(params: VideoParams) -> str:
    """What the ingest stage reads: the text as is, or a local file uploaded into the store.

    A local path is passed as an absolute path when the store is a local folder (the services
    share this machine); otherwise the file is uploaded once, under its sha256.
    """
    if params.video_kind is not VideoKind.PATH:
        return params.video
    path = Path(params.video).resolve()
    store = flow_store()
    if isinstance(store, LocalFolderStore):
        return str(path)
    from services.common.store import sha256_file

    digest = sha256_file(path)
    key = f"sources/{digest}/{path.name}"
    if store.stat(key) is None:
        get_run_logger().info("uploading %s to the store", path)
        store.put_file(key, path, "video/mp4")
    return store.uri(key)


def list_videos(videos: list[str], folder: str | None, store_prefix: str | None) -> list[str]:
    """The sources of a batch: given ones, the video files of a folder, the objects of a prefix."""
    sources = list(videos)
    if folder:
        root = Path(folder)
        if not root.is_dir():
            raise ParameterError("folder", f"{folder!r} is not a folder")
        sources += sorted(
            str(p) for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()
        )
    if store_prefix:
        store = flow_store()
        prefix = store.key_from_uri(store_prefix) if "://" in store_prefix else store_prefix
        sources += [
            store.uri(k) for k in store.list(prefix) if k.lower().endswith(VIDEO_SUFFIXES)
        ]
    if not sources:
        raise ParameterError("videos", "no videos given (a list, a folder or a store prefix)")
    return list(dict.fromkeys(sources))


# ---------------------------------------------------------------------------------------------
# stage tasks


@stage_task("ingest")
def ingest_video(params: VideoParams, source: str) -> StageOutcome:
    """Fetches, cuts and normalizes the video; returns the video and probe references."""
    from nlfpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc

    request = ingest_pb2.RunRequest(
        source=source, time_range=params.time_range or "", force=params.force
    )
    return call_stage_rpc(
        "ingest", "Run", request, stub_factory=ingest_pb2_grpc.IngestServiceStub
    )


def probe_of(ingest: StageOutcome) -> ProbeInfo:
    """The probe facts of the ingested video (read from its JSON artifact)."""
    store = flow_store()
    ref = ingest.outputs["probe"]
    return ProbeInfo.from_json(store.get_bytes(store.key_from_uri(ref.uri)).decode())


def init_frame_index(params: VideoParams, probe: ProbeInfo) -> int:
    """The segmentation init frame: the middle frame, or the frame at seg_init_time."""
    at = params.init_time_in_clip()
    if at is None:
        return probe.frame_count // 2
    index = int(at * probe.fps)
    if not 0 <= index < probe.frame_count:
        raise ParameterError(
            "seg_init_time",
            f"{params.seg_init_time} is frame {index}, but the video has {probe.frame_count} "
            f"frames ({probe.duration_s:.2f} s)",
        )
    return index


def _tracking_request(params: VideoParams, ingest: StageOutcome, init_frame: int):
    from nlfpipe.tracking.v1 import tracking_pb2

    return tracking_pb2.RunRequest(
        video=ingest.ref("video"),
        init_frame_index=init_frame,
        max_persons=params.max_persons if params.max_persons > 0 else 0,
        force=params.force,
    )


@stage_task("tracking", name="candidates-preview")
def preview_candidates(params: VideoParams, ingest: StageOutcome, init_frame: int) -> StageOutcome:
    """Detects the people on the init frame and draws the numbered candidates preview."""
    from nlfpipe.tracking.v1 import tracking_pb2_grpc

    request = _tracking_request(params, ingest, init_frame)
    request.max_persons = 0
    request.preview_only = True
    return call_stage_rpc(
        "tracking", "Run", request, stub_factory=tracking_pb2_grpc.TrackingServiceStub
    )


@stage_task("tracking")
def track_people(
    params: VideoParams,
    ingest: StageOutcome,
    init_frame: int,
    selection: SubjectSelection,
    probe: ProbeInfo,
) -> StageOutcome:
    """Segments and tracks the selected people through the video (per-track masks)."""
    from nlfpipe.common.v1 import common_pb2
    from nlfpipe.tracking.v1 import tracking_pb2_grpc

    request = _tracking_request(params, ingest, init_frame)
    if selection.indices or selection.points:
        request.max_persons = 0
    request.candidate_indices.extend(selection.indices)
    request.select_points.extend(common_pb2.ImagePoint(x=p.x, y=p.y) for p in selection.points)
    return call_stage_rpc(
        "tracking", "Run", request, stub_factory=tracking_pb2_grpc.TrackingServiceStub,
        video_seconds=probe.duration_s,
    )  # fmt: skip


@stage_task("semseg")
def segment_people(params: VideoParams, ingest: StageOutcome, probe: ProbeInfo) -> StageOutcome:
    """Person masks for SLAM (runs concurrently with tracking), on the frames slam may use."""
    from nlfpipe.semseg.v1 import semseg_pb2, semseg_pb2_grpc
    from services.common.slam_frames import slam_frames

    frames = slam_frames(probe.frame_count, probe.fps, params.slam_backend)
    request = semseg_pb2.RunRequest(
        video=ingest.ref("video"),
        frame_indices=[] if len(frames) == probe.frame_count else frames,
        force=params.force,
    )
    return call_stage_rpc(
        "semseg", "Run", request, stub_factory=semseg_pb2_grpc.SemsegServiceStub,
        video_seconds=probe.duration_s,
    )  # fmt: skip


@stage_task("slam")
def estimate_cameras(
    params: VideoParams,
    ingest: StageOutcome,
    semseg: StageOutcome,
    tracking: StageOutcome,
    probe: ProbeInfo,
) -> StageOutcome:
    """The camera of every frame (on the pixels that semseg and tracking leave free)."""
    from nlfpipe.slam.v1 import slam_pb2, slam_pb2_grpc

    request = slam_pb2.RunRequest(
        video=ingest.ref("video"),
        semseg_masks=semseg.ref("masks"),
        track_masks=tracking.ref("masks"),
        fov_deg=params.fov_deg or 0.0,
        backend=slam_pb2.Backend.Value(f"BACKEND_{params.slam_backend.upper()}"),
        scale_source=slam_pb2.ScaleSource.Value(f"SCALE_SOURCE_{params.scale_source.upper()}"),
        force=params.force,
    )
    outcome = call_stage_rpc(
        "slam", "Run", request, stub_factory=slam_pb2_grpc.SlamServiceStub,
        video_seconds=probe.duration_s,
    )  # fmt: skip
    if not outcome.values.get("needs_people_scale"):
        show_trajectory(outcome)
    return outcome


@stage_task("slam")
def scale_cameras(
    params: VideoParams, slam: StageOutcome, pose: StageOutcome, probe: ProbeInfo
) -> StageOutcome:
    """The scale pass: metric cameras from the people of the pose stage's predictions."""
    from nlfpipe.slam.v1 import slam_pb2, slam_pb2_grpc

    request = slam_pb2.RunRequest(
        predictions=pose.ref("predictions"),
        provisional_cameras=slam.ref("cameras"),
        provisional_report=slam.ref("report"),
        fps=probe.fps,
        force=params.force,
    )
    outcome = call_stage_rpc(
        "slam", "Run", request, stub_factory=slam_pb2_grpc.SlamServiceStub,
        video_seconds=probe.duration_s,
    )  # fmt: skip
    show_trajectory(outcome)
    return outcome.model_copy(update={"stage": "slam-scale"})


@stage_task("pose")
def estimate_poses(
    params: VideoParams,
    ingest: StageOutcome,
    tracking: StageOutcome,
    cameras: StageOutcome | None,
    probe: ProbeInfo,
) -> StageOutcome:
    """Runs NLF on every tracked person of every frame (predictions with track ids)."""
    from nlfpipe.pose.v1 import pose_pb2, pose_pb2_grpc

    request = pose_pb2.RunRequest(
        video=ingest.ref("video"),
        masks=tracking.ref("masks"),
        fov_degrees=params.fov_deg or 0.0,
        num_aug=params.nlf.num_aug,
        antialias_factor=params.nlf.antialias_factor,
        internal_batch_size=params.nlf.internal_batch_size,
        batch_size=params.nlf.batch_size,
        force=params.force,
    )
    if cameras is not None:
        request.cameras.CopyFrom(cameras.ref("cameras"))
    return call_stage_rpc(
        "pose", "Run", request, stub_factory=pose_pb2_grpc.PoseServiceStub,
        video_seconds=probe.duration_s,
    )  # fmt: skip


@stage_task("fitting")
def fit_bodies(
    params: VideoParams,
    pose: StageOutcome,
    cameras: StageOutcome | None,
    fps_factor: int,
    probe: ProbeInfo,
) -> StageOutcome:
    """Smooths the predictions and fits SMPL per track, the ground plane and viewer cameras."""
    from nlfpipe.fitting.v1 import fitting_pb2, fitting_pb2_grpc

    request = fitting_pb2.RunRequest(
        predictions=pose.ref("predictions"),
        fps=probe.fps,
        fps_factor=fps_factor,
        fov_degrees=params.fov_deg or 0.0,
        image_width=probe.width,
        image_height=probe.height,
        write_preview=True,
        force=params.force,
    )
    if cameras is not None:
        request.cameras.CopyFrom(cameras.ref("cameras"))
    return call_stage_rpc(
        "fitting", "Run", request, stub_factory=fitting_pb2_grpc.FittingServiceStub,
        video_seconds=probe.duration_s,
    )  # fmt: skip


@stage_task("interpolation")
def interpolate_video(params: VideoParams, ingest: StageOutcome, probe: ProbeInfo) -> StageOutcome:
    """The video at twice its frame rate, frame for frame in the layout of the doubled fits."""
    from nlfpipe.interpolation.v1 import interpolation_pb2, interpolation_pb2_grpc

    request = interpolation_pb2.RunRequest(video=ingest.ref("video"), fps_factor=2,
                                           force=params.force)  # fmt: skip
    return call_stage_rpc(
        "interpolation", "Run", request,
        stub_factory=interpolation_pb2_grpc.InterpolationServiceStub,
        video_seconds=probe.duration_s,
    )  # fmt: skip


@stage_task("render")
def render_videos(
    params: VideoParams,
    ingest: StageOutcome,
    fitting: StageOutcome,
    interpolation: StageOutcome | None,
    fps_factor: int,
    probe: ProbeInfo,
) -> StageOutcome:
    """Renders the camera-view and world-view videos, their previews and the exports.

    The camera view shows the interpolated video when the frame rate is doubled, else the
    ingested video (each frame shown `fps_factor` times).
    """
    from nlfpipe.render.v1 import render_pb2, render_pb2_grpc

    if interpolation is not None:
        video, repeat = interpolation.ref("video"), 1
    else:
        video, repeat = ingest.ref("video"), fps_factor
    request = render_pb2.RunRequest(
        video=video,
        video_frame_repeat=repeat,
        fits=fitting.ref("fits"),
        ground=fitting.ref("ground"),
        display_cameras=fitting.ref("display_cameras"),
        viewer_cameras=fitting.ref("viewer_cameras"),
        force=params.force,
    )
    return call_stage_rpc(
        "render", "Run", request, stub_factory=render_pb2_grpc.RenderServiceStub,
        video_seconds=probe.duration_s,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# artifacts and links


def browser_links(uris: dict[str, str]) -> dict[str, str]:
    """http(s) links of stored objects that a browser can open (see orchestrator/artifacts.py)."""
    store = flow_store()
    links = {name: browser_link(store, uri) for name, uri in uris.items()}
    return {name: link for name, link in links.items() if link}


def candidate_count(preview: StageOutcome) -> int:
    return int(preview.values.get("candidate_count", preview.counts.get("candidates", 0)))


def show_candidates(preview: StageOutcome) -> tuple[dict, str | None]:
    """Publishes the numbered candidates preview as an image artifact; returns the candidates
    (format nlfpipe.candidates/1) and the preview's browser link (None when it has none)."""
    store = flow_store()
    candidates = (
        read_candidates(store, preview.outputs["candidates"].uri)
        if "candidates" in preview.outputs
        else {"candidates": []}
    )
    image = preview.outputs.get("candidates_preview")
    link = browser_link(store, image.uri, "candidates.png") if image else None
    if link:
        create_image_artifact(image_url=link, description="Candidates on the init frame")
    return candidates, link


def publish_results(summary: RunSummary, copy_to: str | None) -> list[dict]:
    """One row per output (label, file name, link, size); with `copy_to`, the outputs are first
    copied into the store under that prefix (the results folder of a UI run)."""
    store = flow_store()
    rows = []
    for stage in summary.stages:
        if stage.stage.endswith("-preview"):  # its outputs are the tracking stage's too
            continue
        for name, ref in stage.outputs.items():
            file_name = result_file_name(stage.stage, name, ref.media_type)
            uri = ref.uri
            if copy_to:
                uri = copy_into_results(store, uri, copy_to, file_name, ref.media_type)
            rows.append({
                "label": output_label(f"{stage.stage}.{name}"), "file": file_name,
                "link": browser_link(store, uri, file_name), "size_bytes": ref.size_bytes,
            })  # fmt: skip
    return rows


#: The render stage's previews, shown as image artifacts of the run.
RENDER_PREVIEWS = {
    "camera_view_clip": "Camera view (animated preview)",
    "world_view_clip": "World view (animated preview)",
    "camera_view_stills": "Camera view: three frames",
    "world_view_stills": "World view: three frames",
    "top_view": "Top view of the world (metres): camera path and every track's path",
}


def show_render_previews(summary: RunSummary) -> None:
    """Shows the render previews in the UI (image artifacts, when the store can link them)."""
    render = next((s for s in summary.stages if s.stage == "render"), None)
    if render is None:
        return
    uris = {name: render.outputs[name].uri for name in RENDER_PREVIEWS if name in render.outputs}
    for name, link in browser_links(uris).items():
        create_image_artifact(image_url=link, description=RENDER_PREVIEWS[name])


def show_trajectory(slam: StageOutcome) -> None:
    """Publishes the camera path's top view (the slam preview) as an image artifact."""
    if "preview" not in slam.outputs:
        return
    link = browser_links({"preview": slam.outputs["preview"].uri}).get("preview")
    if link:
        source = slam.values.get("scale_source")
        create_image_artifact(
            image_url=link, description=f"Camera trajectory (top view; scale from {source})"
        )


def store_summary(summary: RunSummary) -> str:
    """Writes the summary JSON under runs/ in the store; returns its URI."""
    store = flow_store()
    key_part = "-".join(s.cache_key[:12] for s in summary.stages if s.cache_key) or "run"
    data = {
        **summary.model_dump(exclude={"summary_uri"}),
        "outputs": summary.outputs(),
        "compute_seconds": summary.compute_seconds,
        "cache_hits": summary.cache_hits,
    }
    info = store.put_bytes(
        f"runs/{key_part}/summary.json", json.dumps(data, indent=1).encode(), "application/json"
    )
    return info.uri


@task(name="ensure-gpu-limits", persist_result=False, cache_policy=NO_CACHE)
def ensure_gpu_limits(tags: list[str], slots: int) -> None:
    """Creates or updates the tag concurrency limits that admit `slots` calls per GPU service."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for tag in tags:
            client.create_concurrency_limit(tag=tag, concurrency_limit=slots)
