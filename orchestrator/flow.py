"""The Prefect flows: `process_video` (one video through every stage) and `process_videos`.

This module must not use `from __future__ import annotations`: Prefect resolves the flow's
parameter types at run time, and UI-triggered runs with pydantic parameters break with it.
"""

import json
import time
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.input import RunInput
from prefect.runtime import deployment
from prefect.states import Failed, State
from pydantic import Field, create_model

from orchestrator import run_log, stage_tasks
from orchestrator.artifacts import candidates_markdown, results_markdown, results_prefix
from orchestrator.params import (
    AVAILABLE_STAGES,
    BatchOptions,
    ParameterError,
    SubjectSelection,
    VideoParams,
    validate_params,
)
from orchestrator.results import run_folder_name
from orchestrator.run_names import process_video_run_name
from orchestrator.summary import RunSummary, markdown, models_used, people_in
from orchestrator.tasks import GPU_STAGES, GPU_TAG_PREFIX, StageCallError, admitted

run_log.install()


class SubjectChoice(RunInput):
    """The people to track, typed in the Resume dialog when the run pauses."""

    indices: list[int] = Field(
        default_factory=list,
        title="People to track",
        description="The numbers shown on the candidates image, e.g. 0 and 2. Empty: everyone.",
    )


def subject_choice_form(candidates: int) -> type[SubjectChoice]:
    """The Resume form, its numbers limited to 0..candidates-1 (the UI refuses others)."""
    if candidates <= 0:
        return SubjectChoice
    number = Annotated[int, Field(ge=0, le=candidates - 1)]
    return create_model(
        "SubjectChoice",
        __base__=SubjectChoice,
        indices=(
            list[number],
            Field(default_factory=list, title="People to track",
                  description=f"Numbers from the image, 0 to {candidates - 1}. Empty: everyone.",
                  json_schema_extra={"uniqueItems": True}),
        ),
    )  # fmt: skip


def not_candidates(indices: list[int], candidates: int) -> str:
    """Why a choice is refused ("" when it is fine)."""
    if len(set(indices)) != len(indices):
        return f"each number once, please: {indices} repeats one"
    bad = [i for i in indices if not 0 <= i < candidates]
    if bad and candidates:
        return f"{', '.join(map(str, bad))}: not a candidate; choose from 0 to {candidates - 1}"
    return ""


@flow(name="process-video", flow_run_name=process_video_run_name, validate_parameters=True)
def process_video(params: VideoParams) -> RunSummary:
    """Runs one video through ingest, tracking (with semseg and slam for a moving camera), pose
    and fitting, interpolation when the frame rate is doubled, and render; returns the
    summary.

    Args:
        params: The video and how to process it.
    """
    try:
        return _process_video(params)
    except (ParameterError, StageCallError) as err:
        return _failed(err)


def _failed(err: Exception) -> State:
    """One clean ERROR line for a parameter or stage error; the traceback at DEBUG."""
    logger = get_run_logger()
    what = "invalid parameter" if isinstance(err, ParameterError) else "stage failed"
    logger.error("%s: %s", what, err)
    logger.debug("%s", what, exc_info=err)
    return Failed(message=f"{what}: {err}", data=err)


def _process_video(params: VideoParams) -> RunSummary:
    started = time.monotonic()
    logger = get_run_logger()
    params = validate_params(params)
    outcomes = []
    waiting_s = 0.0

    source = stage_tasks.resolve_source(params)
    ingest = admitted(stage_tasks.ingest_video, "ingest")(params, source)
    outcomes.append(ingest)
    probe = stage_tasks.probe_of(ingest)
    fps_factor = params.fps_factor or (1 if probe.fps > 40 else 2)
    init_frame = stage_tasks.init_frame_index(params, probe)
    logger.info(
        "video: %d frames at %.3f fps, %dx%d; init frame %d; fps factor %d",
        probe.frame_count, probe.fps, probe.width, probe.height, init_frame, fps_factor,
    )  # fmt: skip

    selection = params.subjects
    if selection.in_ui:
        preview = admitted(stage_tasks.preview_candidates, "tracking")(params, ingest, init_frame)
        outcomes.append(preview.model_copy(update={"stage": "tracking-preview"}))
        selection, waiting_s = ask_for_subjects(preview)

    # The doubled video needs only the ingested video: it runs alongside tracking and pose.
    interpolation = (
        admitted(stage_tasks.interpolate_video, "interpolation").submit(params, ingest, probe)
        if fps_factor == 2
        else None
    )
    semseg = None
    if not params.static_camera:  # semseg runs while tracking does; slam needs both
        semseg = admitted(stage_tasks.segment_people, "semseg").submit(params, ingest, probe)
    tracking = admitted(stage_tasks.track_people, "tracking")(
        params, ingest, init_frame, selection, probe
    )
    outcomes.append(tracking)
    cameras = None
    if semseg is not None:
        semseg = semseg.result()
        cameras = admitted(stage_tasks.estimate_cameras, "slam")(
            params, ingest, semseg, tracking, probe
        )
        outcomes += [semseg, cameras]
    pose = admitted(stage_tasks.estimate_poses, "pose")(params, ingest, tracking, cameras, probe)
    outcomes.append(pose)
    if cameras is not None and cameras.values.get("needs_people_scale"):
        cameras = admitted(stage_tasks.scale_cameras, "slam")(params, cameras, pose, probe)
        outcomes.append(cameras)
    fitting = admitted(stage_tasks.fit_bodies, "fitting")(params, pose, cameras, fps_factor, probe)
    outcomes.append(fitting)
    doubled = None
    if interpolation is not None:
        doubled = interpolation.result()
        outcomes.append(doubled)
    if params.renderer != "none":
        render = admitted(stage_tasks.render_videos, "render")(
            params, ingest, fitting, doubled, fps_factor, probe
        )
        outcomes.append(render)

    summary = RunSummary(
        video=params.video,
        stages=outcomes,
        people_found=people_in(tracking),
        frames=probe.frame_count,
        fps_factor=fps_factor,
        wall_seconds=time.monotonic() - started,
        parameters=params.model_dump(mode="json"),
        models=models_used(outcomes, _read_json),
        waiting_seconds=waiting_s,
    )
    return publish_summary(summary)


def _read_json(uri: str) -> dict:
    store = stage_tasks.flow_store()
    return json.loads(store.get_bytes(store.key_from_uri(uri)))


def ask_for_subjects(preview) -> tuple[SubjectSelection, float]:
    """Pauses the run until someone chooses candidates in the Resume dialog (which shows the
    numbered image and a table of them); asks again, with the error, for a number that is not
    a candidate. Returns the selection and the seconds spent waiting."""
    logger = get_run_logger()
    candidates, image_link = stage_tasks.show_candidates(preview)
    count = len(candidates.get("candidates", [])) or stage_tasks.candidate_count(preview)
    logger.info("waiting for subject selection in the UI (%d candidates)", count)
    waited, error = 0.0, ""
    while True:
        form = subject_choice_form(count).with_initial_data(
            description=candidates_markdown(candidates, image_link, error)
        )
        started = time.monotonic()
        choice = _pause_for(form)
        waited += time.monotonic() - started
        error = not_candidates(choice.indices, count)
        if not error:
            break
        logger.warning("subject selection refused (%s); asking again", error)
    logger.info("subjects chosen in the UI: %s", choice.indices or "all")
    return SubjectSelection(indices=choice.indices), waited


def _pause_for(model: type[RunInput]) -> RunInput:
    from prefect.flow_runs import pause_flow_run

    return pause_flow_run(wait_for_input=model, timeout=24 * 3600, poll_interval=2)


@task(name="publish-summary", persist_result=False, cache_policy=NO_CACHE)
def publish_summary(summary: RunSummary) -> RunSummary:
    """Writes the summary JSON to the store and the summary artifacts to Prefect."""
    summary.summary_uri = stage_tasks.store_summary(summary)
    folder = run_folder_name(summary.video, summary.parameters)
    copy_to = results_prefix(folder) if deployment.get_id() else None
    results = results_markdown(stage_tasks.publish_results(summary, copy_to))
    create_markdown_artifact(
        markdown=results,
        key=_artifact_key("run-results", summary.video),
        description=f"Results of {summary.video}: a link per output",
    )
    create_markdown_artifact(
        markdown=markdown(summary, results),
        key=_artifact_key("run-summary", summary.video),
        description=f"nlfpipe run of {summary.video}",
    )
    stage_tasks.show_render_previews(summary)
    create_table_artifact(
        table=[
            {
                "stage": s.stage,
                "cache_hit": s.cache_hit,
                "compute_s": round(s.compute_seconds, 3),
                "call_s": round(s.wall_seconds, 3),
                "attempts": s.attempts,
                **{k: v for k, v in s.counts.items()},
            }
            for s in summary.stages
        ],
        description="stage timings",
    )
    return summary


def _artifact_key(prefix: str, video: str) -> str:
    """Artifact keys allow lower-case letters, digits and dashes only."""
    stem = "".join(c if c.isalnum() else "-" for c in Path(video).stem.lower()).strip("-")
    return f"{prefix}-{stem[:40] or 'video'}"


@task(name="video", persist_result=False, cache_policy=NO_CACHE)
def _video_subflow(params: VideoParams) -> RunSummary:
    return process_video(params)


@flow(name="process-videos", validate_parameters=True)
def process_videos(
    videos: list[str] = [],  # noqa: B006 - never mutated; a plain list keeps the form simple
    folder: str = "",
    store_prefix: str = "",
    options: BatchOptions = BatchOptions(),  # noqa: B008 - an immutable-by-use default
    max_concurrent_videos: Annotated[int, Field(ge=1, le=64)] = 2,
    gpu_slots_per_service: Annotated[int, Field(ge=1, le=16)] = 1,
) -> list[RunSummary]:
    """Runs many videos (a list, a folder, or a store prefix), each as a process-video subflow.

    GPU stages carry a tag per service with a concurrency limit of `gpu_slots_per_service`,
    so concurrent videos queue for a GPU service instead of oversubscribing it.

    Args:
        videos: Video paths, URLs, YouTube ids or stored objects, one per entry.
        folder: A folder on the worker: every video file in it (and below) is processed.
        store_prefix: Every video stored under this prefix (e.g. s3://bucket/uploads/).
        options: The options of every video (as in the single-video form).
        max_concurrent_videos: How many videos run at the same time.
        gpu_slots_per_service: How many calls each GPU service takes at a time.
    """
    logger = get_run_logger()
    sources = stage_tasks.list_videos(list(videos or []), folder or None, store_prefix or None)
    options = options or BatchOptions()
    if max_concurrent_videos < 1:
        raise ParameterError("max_concurrent_videos", "must be at least 1")
    all_params = []
    for source in sources:
        try:
            all_params.append(validate_params({"video": source, **options.model_dump()}))
        except ParameterError as err:
            raise ParameterError(err.field, f"{source}: {err}") from None
    stage_tasks.ensure_gpu_limits(
        [GPU_TAG_PREFIX + s for s in sorted(GPU_STAGES & AVAILABLE_STAGES)], gpu_slots_per_service
    )
    logger.info("%d videos, up to %d at a time", len(all_params), max_concurrent_videos)
    pending = list(all_params)
    running, summaries, failures = {}, [], []
    while pending or running:
        while pending and len(running) < max_concurrent_videos:
            params = pending.pop(0)
            running[_video_subflow.submit(params)] = params.video
        done = next(as_completed(list(running)))
        video = running.pop(done)
        try:
            summaries.append(done.result())
        except Exception as err:  # noqa: BLE001 - one bad video must not stop the others
            logger.error("%s failed: %s", video, err)
            failures.append(f"{video}: {err}")
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(all_params)} videos failed:\n"
                           + "\n".join(failures))
    return summaries

