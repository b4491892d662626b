"""NLF on every tracked person in every frame of a video, streamed to a predictions file.

Frames are decoded in a background thread and never all held at once; masks are read frame by
frame too, so memory does not grow with the video's length. Boxes come from the track masks,
scaled to the video's resolution; frames go to the model ``batch_size`` at a time (frames with
nobody are written without a model call); every frame gets a record, in order.
"""

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import av
import numpy as np

from services.common.errors import InvalidInput, PreconditionFailed
from services.common.formats.cameras import DEFAULT_FOV_DEGREES, CameraTrack, intrinsics_from_fov
from services.common.formats.masks import iter_track_masks
from services.common.formats.predictions import (
    UNTRACKED,
    FrameCamera,
    PredictionFrame,
    PredictionsWriter,
)
from services.pose.nlf import BatchCameras, InferenceOptions, NlfModel, PersonOutputs

_ASPECT_TOLERANCE = 0.02


@dataclass(frozen=True)
class PoseJob:
    """One video to estimate, with its optional masks and cameras (local paths)."""

    video: Path
    output: Path
    masks: Path | None = None
    cameras: Path | None = None
    fov_degrees: float = DEFAULT_FOV_DEGREES
    intrinsics: np.ndarray | None = None  # (3, 3) px; a static camera when no cameras are given
    batch_size: int = 8
    options: InferenceOptions = field(default_factory=InferenceOptions)
    model_info: dict = field(default_factory=dict)  # name, file, sha256: copied to the metadata
    identity: dict = field(default_factory=dict)  # ModelIdentity.params(): copied to the metadata


@dataclass
class PoseSummary:
    """What a run produced and where its time went (seconds)."""

    frames: int = 0
    person_frames: int = 0
    tracks: int = 0
    model_calls: int = 0
    empty_masks: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def add_time(self, step: str, seconds: float) -> None:
        self.timings[step] = self.timings.get(step, 0.0) + seconds


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    num_frames: int  # 0 when the container does not say


def probe_video(path: Path) -> VideoInfo:
    """Size, frame rate and frame count of the first video stream."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return VideoInfo(stream.codec_context.width, stream.codec_context.height,
                             float(stream.average_rate or 0), int(stream.frames or 0))
    except (av.error.FFmpegError, IndexError) as e:
        raise InvalidInput(f"video: {path.name} cannot be opened as a video ({e})") from None


def _decode(path: Path, out: queue.Queue, stop: threading.Event) -> None:
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                item = frame.to_ndarray(format="rgb24")
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        out.put(None)
    except Exception as e:  # noqa: BLE001 - handed to the consumer, which raises it
        out.put(e)


def decode_frames(path: Path, prefetch: int) -> Iterator[np.ndarray]:
    """RGB uint8 frames (H, W, 3), decoded ahead by a background thread."""
    frames: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
    stop = threading.Event()
    thread = threading.Thread(target=_decode, args=(path, frames, stop), daemon=True)
    thread.start()
    try:
        while (item := frames.get()) is not None:
            if isinstance(item, Exception):
                raise InvalidInput(f"video: decoding failed: {item}") from item
            yield item
    finally:
        stop.set()
        thread.join()


class FrameCameras:
    """The camera of every frame: from a camera track, or one static camera."""

    def __init__(self, track: CameraTrack | None, static_k: np.ndarray | None, width: int,
                 height: int, num_frames: int):
        self.track = track
        if track is None:
            self._k = static_k
            self.world_up = np.array([0.0, -1.0, 0.0])
            return
        if num_frames and len(track) != num_frames:
            raise PreconditionFailed(
                f"cameras: {len(track)} cameras for a video of {num_frames} frames; the camera "
                f"list must have one camera per frame"
            )
        cam_w, cam_h = track.image_size
        _check_aspect("cameras", cam_w, cam_h, width, height)
        self._intrinsics = _scale_intrinsics(track.intrinsics, width / cam_w, height / cam_h)
        self.world_up = track.world_up

    def __len__(self) -> int:
        return len(self.track) if self.track is not None else 0

    def frame(self, i: int) -> FrameCamera:
        if self.track is None:
            return FrameCamera(self._k, np.eye(3), np.zeros(3), self.world_up)
        if i >= len(self.track):
            raise PreconditionFailed(f"cameras: no camera for frame {i} ({len(self.track)} given)")
        return FrameCamera(self._intrinsics[i], self.track.rotation[i],
                           self.track.optical_center[i], self.world_up, self.track.distortion[i])

    def batch(self, cams: list[FrameCamera]) -> BatchCameras:
        return BatchCameras(
            intrinsics=np.stack([c.intrinsic_matrix for c in cams]),
            distortion=np.stack([_five(c.distortion_coeffs) for c in cams]),
            extrinsics=np.stack([c.extrinsic_matrix() for c in cams]),
            world_up=np.asarray(self.world_up, np.float64),
        )

    def describe(self) -> dict:
        if self.track is None:
            return {"source": "static", "intrinsic_matrix": self._k.tolist()}
        return {"source": "cameras", "image_size": list(self.track.image_size)}


def _five(coeffs: np.ndarray | None) -> np.ndarray:
    out = np.zeros(5)
    if coeffs is not None:
        out[: min(5, len(coeffs))] = coeffs[:5]
    return out


def _scale_intrinsics(k: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics for a resized image (pixel-centre convention, as intrinsics_from_fov)."""
    out = k.copy()
    out[..., 0, 0] *= sx
    out[..., 0, 1] *= sx
    out[..., 0, 2] = (k[..., 0, 2] + 0.5) * sx - 0.5
    out[..., 1, 1] *= sy
    out[..., 1, 2] = (k[..., 1, 2] + 0.5) * sy - 0.5
    return out


def _check_aspect(what: str, w: int, h: int, video_w: int, video_h: int) -> None:
    if abs((w / h) / (video_w / video_h) - 1) > _ASPECT_TOLERANCE:
        raise PreconditionFailed(
            f"{what}: {w}x{h} does not have the video's aspect ratio ({video_w}x{video_h})"
        )


class MaskBoxes:
    """Per-frame boxes of the track masks, in video pixels."""

    def __init__(self, path: Path, width: int, height: int, num_frames: int):
        self._records = iter_track_masks(path)
        header = next(self._records)
        self.num_frames = int(header["num_frames"])
        self.track_ids = [int(t) for t in header["track_ids"]]
        mask_w, mask_h = int(header["width"]), int(header["height"])
        if num_frames and self.num_frames != num_frames:
            raise PreconditionFailed(
                f"masks: {self.num_frames} frames of masks for a video of {num_frames} frames; "
                f"were they made from this video?"
            )
        _check_aspect("masks", mask_w, mask_h, width, height)
        self._scale = np.array([width / mask_w, height / mask_h] * 2, np.float64)
        self.empty_masks = 0

    def next_frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(track ids (n,), boxes (n, 4) x, y, w, h) of the next frame, track ids ascending."""
        try:
            masks = next(self._records)
        except StopIteration:
            raise PreconditionFailed(
                f"masks: the masks end at frame {index} but the video goes on"
            ) from None
        ids, boxes = [], []
        for track_id in sorted(masks):
            box = masks[track_id].bbox()
            if box[2] <= 0 or box[3] <= 0:
                self.empty_masks += 1
                continue
            ids.append(track_id)
            boxes.append(box * self._scale)
        return np.asarray(ids, np.int64), np.asarray(boxes, np.float64).reshape(-1, 4)


@dataclass
class _Pending:
    index: int
    image: np.ndarray
    camera: FrameCamera
    track_ids: np.ndarray
    boxes: np.ndarray


def estimate_video(
    model: NlfModel,
    job: PoseJob,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> PoseSummary:
    """Runs NLF over the whole video and writes ``job.output`` (all or nothing).

    ``progress(done, total)`` is called after every batch; it may raise (e.g. ``Cancelled``)
    to stop the run, which then leaves no output file.
    """
    if job.batch_size < 1:
        raise InvalidInput(f"batch_size must be at least 1, got {job.batch_size}")
    video = probe_video(job.video)
    summary = PoseSummary()
    boxes_source = (
        MaskBoxes(job.masks, video.width, video.height, video.num_frames) if job.masks else None
    )
    expected = video.num_frames or (boxes_source.num_frames if boxes_source else 0)
    track = CameraTrack.load(job.cameras) if job.cameras else None
    static_k = None
    if track is None:
        static_k = (np.asarray(job.intrinsics, np.float64) if job.intrinsics is not None
                    else intrinsics_from_fov(job.fov_degrees, video.width, video.height))
    cameras = FrameCameras(track, static_k, video.width, video.height, expected)
    expected = expected or len(cameras)
    if not expected:
        raise InvalidInput("video: the number of frames is unknown (re-encode it with ingest)")

    camera_info = {**cameras.describe(), "world_up": np.asarray(cameras.world_up).tolist()}
    if track is None and job.intrinsics is None:
        camera_info["fov_degrees"] = job.fov_degrees  # the static camera came from it
    metadata = {
        "video": {"width": video.width, "height": video.height, "fps": video.fps},
        "model": job.model_info,
        "identity": job.identity,
        "mode": "masks" if boxes_source else "detector",
        "track_ids": boxes_source.track_ids if boxes_source else [],
        "cameras": camera_info,
        "params": {"batch_size": job.batch_size,
                   **job.options.used(detector=boxes_source is None)},
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    seen_tracks: set[int] = set()
    with PredictionsWriter(job.output, num_frames=expected, num_vertices=model.num_vertices,
                           num_joints=model.num_joints, metadata=metadata) as writer, closing(
        decode_frames(job.video, prefetch=2 * job.batch_size)
    ) as frames:
        pending: list[_Pending] = []
        index = 0
        while True:
            started = time.perf_counter()
            image = next(frames, None)
            summary.add_time("decode", time.perf_counter() - started)
            if image is not None:
                if index >= expected:
                    raise PreconditionFailed(
                        f"the video has more frames than the {expected} of its masks/cameras"
                    )
                started = time.perf_counter()
                if boxes_source:
                    ids, boxes = boxes_source.next_frame(index)
                else:
                    ids, boxes = np.zeros(0, np.int64), np.zeros((0, 4))
                pending.append(_Pending(index, image, cameras.frame(index), ids, boxes))
                summary.add_time("boxes", time.perf_counter() - started)
                index += 1
            if pending and (image is None or len(pending) == job.batch_size):
                results = _run_batch(model, pending, cameras, job.options, summary,
                                     detector=boxes_source is None)
                started = time.perf_counter()
                for item, result in zip(pending, results, strict=True):
                    record = _record(item, result, model.num_vertices, model.num_points)
                    writer.append(record)
                    summary.person_frames += record.num_people
                    seen_tracks.update(item.track_ids.tolist())
                summary.add_time("write", time.perf_counter() - started)
                pending = []
                if progress:
                    progress(index, expected)
            if image is None:
                break
        if index != expected:
            raise PreconditionFailed(
                f"the video has {index} frames but its masks/cameras have {expected}"
            )
        started = time.perf_counter()
    summary.add_time("write", time.perf_counter() - started)
    summary.frames = index
    summary.tracks = len(seen_tracks)
    summary.empty_masks = boxes_source.empty_masks if boxes_source else 0
    return summary


def _run_batch(model: NlfModel, pending: list[_Pending], cameras: FrameCameras,
               options: InferenceOptions, summary: PoseSummary, detector: bool
               ) -> list[PersonOutputs | None]:
    """Model outputs for the frames of a batch (None for frames without anyone to estimate)."""
    started = time.perf_counter()
    chosen = pending if detector else [p for p in pending if len(p.track_ids)]
    results: list[PersonOutputs | None] = [None] * len(pending)
    if chosen:
        images = np.stack([p.image for p in chosen])
        batch_cameras = cameras.batch([p.camera for p in chosen])
        if detector:
            outputs = model.detect(images, batch_cameras, options)
        else:
            outputs = model.estimate(images, [p.boxes for p in chosen], batch_cameras, options)
        summary.model_calls += 1
        by_index = {p.index: out for p, out in zip(chosen, outputs, strict=True)}
        results = [by_index.get(p.index) for p in pending]
    summary.add_time("model", time.perf_counter() - started)
    return results


def _record(item: _Pending, result: PersonOutputs | None, num_vertices: int,
            num_points: int) -> PredictionFrame:
    if result is None:
        points = np.zeros((0, num_points, 3), np.float32)
        unc = np.zeros((0, num_points), np.float32)
    else:
        points, unc = result.points, result.uncertainties
    if not (np.isfinite(points).all() and np.isfinite(unc).all()):
        raise RuntimeError(f"the model returned non-finite values in frame {item.index}")
    if result is not None and result.boxes is not None:
        track_ids = np.full(len(points), UNTRACKED, np.int64)
        boxes, scores = result.boxes[:, :4], result.boxes[:, 4]
    else:
        track_ids, boxes, scores = item.track_ids, item.boxes, np.ones(len(points), np.float32)
    return PredictionFrame(
        frame_index=item.index,
        track_ids=track_ids,
        boxes=boxes,
        box_scores=scores,
        vertices=points[:, :num_vertices],
        joints=points[:, num_vertices:],
        vertex_uncertainties=unc[:, :num_vertices],
        joint_uncertainties=unc[:, num_vertices:],
        camera=item.camera,
    )
