"""The tracking stage's computation: init frame, candidates, selection, propagation, output."""

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlemasklib import RLEMask

from services.common.errors import InvalidInput
from services.common.formats.masks import MEDIA_TYPE as MASKS_MEDIA_TYPE
from services.common.formats.masks import write_track_masks
from services.common.frames import Video, resize, working_shape
from services.common.identity import ModelIdentity
from services.common.stagerun import OutputFile, StageOutputs, StageRun
from services.tracking.detection import PersonDetector, person_candidates
from services.tracking.morph import cleanup_mask
from services.tracking.preview import render_candidates_preview
from services.tracking.propagation import MaskPropagator, PassPlan, pass_progress, propagate
from services.tracking.selection import (
    Candidate,
    masks_to_array,
    no_person_error,
    resolve_init_frame,
    select_subjects,
)

STAGE = "tracking"
VERSION = "1"
CANDIDATES_FORMAT = "nlfpipe.candidates/1"


@dataclass(frozen=True)
class TrackingParams:
    """Parameters of one tracking run (defaults: the reference's run_all settings)."""

    init_frame_index: int | None = None  # None: by time, or the middle frame
    init_time_seconds: float | None = None
    max_persons: int = 0  # 0: all candidates
    candidate_indices: tuple[int, ...] = ()
    select_points: tuple[tuple[float, float], ...] = ()  # video pixels
    passes: int = 2
    permute_frames: bool = True
    morph_cleanup: bool = True
    short_side: int = 320  # working resolution of STCN and of the masks
    mem_size: int = 128  # frames in permanent memory
    temp_mem_size: int = 2  # frames in the temporary ring buffer of the final pass
    top_k: int = 20
    preview_only: bool = False
    seed: int = 0  # of the frame permutations and memory replacement

    def __post_init__(self):
        checks = {
            "passes": (self.passes, 1, 20),
            "short_side": (self.short_side, 16, 4096),
            "mem_size": (self.mem_size, 1, 10000),
            "temp_mem_size": (self.temp_mem_size, 0, 1000),
            "top_k": (self.top_k, 1, 10000),
        }
        for name, (value, low, high) in checks.items():
            if not low <= value <= high:
                raise InvalidInput(f"{name}={value} is out of range ({low} to {high})")
        if any(i < 0 for i in self.candidate_indices):
            raise InvalidInput("candidate_indices must not be negative")

    def to_dict(self) -> dict:
        """JSON-able parameters (the cache key is derived from them)."""
        return asdict(self)


@dataclass
class TrackingBackend:
    """The detector and propagator implementation a service runs with."""

    name: str
    detector: PersonDetector
    make_propagator: Callable[[TrackingParams], MaskPropagator]
    identity: ModelIdentity = field(default_factory=ModelIdentity)  # weights, device, precision


def track_summaries(
    frames: Sequence[dict[int, RLEMask]], subjects: Sequence[Candidate]
) -> list[dict]:
    """Per track: the candidate it came from, frames present, first/last frame, mean area."""
    summaries = []
    for track_id, subject in enumerate(subjects):
        present = [i for i, f in enumerate(frames) if track_id in f]
        areas = [int(frames[i][track_id].area()) for i in present]
        summaries.append(
            {
                "track_id": track_id,
                "candidate_index": subject.index,
                "init_score": round(subject.score, 6),
                "frames_present": len(present),
                "first_frame": present[0] if present else -1,
                "last_frame": present[-1] if present else -1,
                "mean_area_px": sum(areas) / len(areas) if areas else 0.0,
            }
        )
    return summaries


def compute_tracking(
    run: StageRun, params: TrackingParams, backend: TrackingBackend
) -> StageOutputs:
    """Runs tracking on `run.inputs["video"]`; outputs `candidates`, `candidates_preview` and
    (unless preview_only) `masks`."""
    video = Video(run.inputs["video"])
    # Never upscale: a larger working size adds compute and no detail.
    short_side = min(params.short_side, video.height, video.width)
    shape = working_shape(video.height, video.width, short_side)
    init_index = resolve_init_frame(
        video.num_frames, video.fps, params.init_frame_index, params.init_time_seconds
    )
    with run.step("detect"):
        run.progress(0, 0, f"detecting persons on frame {init_index}", "detect")
        full_frame = video.frame(init_index)
        init_frame = resize(full_frame, shape)
        candidates = person_candidates(init_frame, backend.detector)
    if not candidates:
        raise no_person_error(init_index, video.fps, video.num_frames)
    files = _write_candidates(run.workdir, video, shape, init_index, full_frame, candidates)
    counts = {"candidates": len(candidates), "frames": video.num_frames}
    if params.preview_only:
        return StageOutputs(files, counts, {"init_frame": init_index})

    subjects = select_subjects(
        candidates,
        max_persons=params.max_persons,
        indices=params.candidate_indices,
        points=params.select_points,
        point_scale=(shape[1] / video.width, shape[0] / video.height),
    )
    plan = PassPlan(video.num_frames, init_index, params.passes, params.permute_frames, params.seed)
    with run.step("propagate"):
        frames = propagate(
            plan,
            backend.make_propagator(params),
            init_frame,
            masks_to_array(subjects),
            lambda: video.frames(shape),
            run.workdir,
            on_frame=lambda done, total: run.progress(
                done, total, pass_progress(done, plan.num_frames, plan.passes), "propagate"
            ),
        )
    if params.morph_cleanup:
        with run.step("cleanup"):
            frames = [_cleaned(f) for f in frames]
    summaries = track_summaries(frames, subjects)
    with run.step("write"):
        masks_path = run.workdir / "masks.jsonl.zst"
        meta = {
            "stage": STAGE,
            "backend": backend.name,
            "init_frame": init_index,
            "video_width": video.width,
            "video_height": video.height,
            "fps": video.fps,
            "tracks": summaries,
        }
        write_track_masks(masks_path, frames, shape[0], shape[1], meta)
    files["masks"] = OutputFile(masks_path, MASKS_MEDIA_TYPE)
    counts["tracks"] = len(subjects)
    return StageOutputs(files, counts, {"init_frame": init_index, "tracks": summaries})


def _cleaned(masks: dict[int, RLEMask]) -> dict[int, RLEMask]:
    cleaned = {t: cleanup_mask(m) for t, m in masks.items()}
    return {t: m for t, m in cleaned.items() if m.area() > 0}


def _write_candidates(
    workdir: Path,
    video: Video,
    shape: tuple[int, int],
    init_index: int,
    full_frame,
    candidates: Sequence[Candidate],
) -> dict[str, OutputFile]:
    scale_x, scale_y = video.width / shape[1], video.height / shape[0]
    document = {
        "format": CANDIDATES_FORMAT,
        "init_frame": init_index,
        "init_time_seconds": init_index / video.fps,
        "video_width": video.width,
        "video_height": video.height,
        "candidates": [c.to_json(scale_x, scale_y) for c in candidates],
    }
    json_path = workdir / "candidates.json"
    json_path.write_text(json.dumps(document, indent=1))
    png_path = workdir / "candidates_preview.png"
    png_path.write_bytes(render_candidates_preview(full_frame, candidates))
    return {
        "candidates": OutputFile(json_path, "application/json"),
        "candidates_preview": OutputFile(png_path, "image/png"),
    }
