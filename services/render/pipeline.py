"""The render on files: fits + cameras + ground + video -> camera-view and world-view videos,
their previews and the top-view plot, streamed frame by frame with bounded memory.

Three threads: one decodes (and repeats) video frames, one poses the meshes of a chunk of
frames ahead, the calling thread draws (its OpenGL context is current only there) and hands
frames to the encoders (framepump writers, a thread each). Queues between them are short, so
memory does not grow with the video's length.
"""

import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import framepump
import numpy as np

from services.common.errors import InvalidInput
from services.common.formats.cameras import CameraTrack
from services.common.formats.fits import load_fits
from services.common.formats.ground import load_ground
from services.common.frames import Video
from services.render.bodies import FOOT_JOINTS, BodyMeshes, TrackTimeline
from services.render.gl import gl_context
from services.render.previews import PreviewCollector, write_top_view
from services.render.projection import output_size
from services.render.scene import Scene
from services.render.views import CameraView, WorldView
from services.render.world import Floor, Grid, make_floor, make_grid

VIEWS = ("camera", "world")
PREFETCH_FRAMES = 8
ENCODER_QUEUE = 8
PELVIS = 0


@dataclass(frozen=True)
class RenderSettings:
    views: tuple[str, ...] = VIEWS
    width: int = 0  # 0: from height and the video's aspect ratio, or the video's
    height: int = 0
    video_frame_repeat: int = 1
    opacity: float = 0.75
    crf: int = 15
    preset: str = "veryfast"


@dataclass
class RenderInputs:
    """Everything a render reads, loaded and checked against each other."""

    video: Video
    fps: Fraction
    meta: dict
    timelines: dict[int, TrackTimeline]
    display: CameraTrack
    viewer: CameraTrack
    ground: dict

    @property
    def num_frames(self) -> int:
        return int(self.meta["num_frames"])


@dataclass
class RenderOutputs:
    videos: dict[str, Path] = field(default_factory=dict)  # view -> mp4
    stills: dict[str, Path] = field(default_factory=dict)  # view -> png
    clips: dict[str, Path] = field(default_factory=dict)  # view -> gif
    top_view: Path | None = None
    width: int = 0
    height: int = 0
    fps: Fraction = Fraction(0)
    frames: int = 0
    counts: dict[str, float] = field(default_factory=dict)


def _video_rate(path: Path) -> Fraction:
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
    if not rate:
        raise InvalidInput("video: the stream has no frame rate; re-run the ingest stage")
    return Fraction(rate)


def load_inputs(
    video_path: Path,
    fits_path: Path,
    ground_path: Path,
    display_path: Path,
    viewer_path: Path,
    repeat: int,
) -> RenderInputs:
    """Reads the inputs and refuses ones that do not belong together (InvalidInput)."""
    meta, fits = load_fits(fits_path)
    n = int(meta["num_frames"])
    video = Video(video_path)
    if video.num_frames * repeat != n:
        raise InvalidInput(
            f"fits: {n} frames, but the video has {video.num_frames} frames"
            + (f" x video_frame_repeat {repeat}" if repeat != 1 else "")
            + "; give the fits of this video (and its interpolated video at fps_factor 2, or "
            "video_frame_repeat=2 with the original video)"
        )
    display, viewer = CameraTrack.load(display_path), CameraTrack.load(viewer_path)
    for name, cams in (("display_cameras", display), ("viewer_cameras", viewer)):
        if len(cams) != n:
            raise InvalidInput(f"{name}: {len(cams)} cameras for {n} output frames of the fits")
    if tuple(display.image_size) != (video.width, video.height):
        raise InvalidInput(
            f"display_cameras: for {display.image_size[0]}x{display.image_size[1]} images, but "
            f"the video is {video.width}x{video.height}"
        )
    for track_id, track in fits.items():
        if len(track.valid) != n:
            raise InvalidInput(f"fits: track {track_id} has {len(track.valid)} frames, not {n}")
    fps = _video_rate(video_path) * repeat
    if abs(float(fps) / float(meta["fps"]) - 1) > 0.01:
        raise InvalidInput(
            f"fits: output rate {meta['fps']:.3f} fps, but the video plays {float(fps):.3f} "
            "fps at this video_frame_repeat"
        )
    timelines = {tid: TrackTimeline.from_fits(t) for tid, t in fits.items()}
    return RenderInputs(video, fps, meta, timelines, display, viewer, load_ground(ground_path))


def _prefetched(items: Iterable, depth: int, stop: threading.Event) -> Iterator:
    """`items` produced by a background thread, at most `depth` ahead; exceptions re-raised."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            slots.put(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _repeated(frames: Iterable[np.ndarray], repeat: int) -> Iterator[np.ndarray]:
    for frame in frames:
        for _ in range(repeat):
            yield frame


def _writer(path: Path, fps: Fraction, settings: RenderSettings, audio: Path | None):
    return framepump.VideoWriter(
        path,
        fps=fps,
        audio_source_path=audio if audio is not None else False,
        queue_size=ENCODER_QUEUE,
        encoder_config=framepump.EncoderConfig(crf=settings.crf, preset=settings.preset),
    )


def world_layout(
    inputs: RenderInputs, meshes: BodyMeshes, paths: dict[int, np.ndarray]
) -> tuple[Floor, Grid]:
    """The floor and its grid for this render's people and camera."""
    feet = np.concatenate([p[:, list(FOOT_JOINTS)] for p in paths.values()] or [np.zeros((0, 3))])
    floor = make_floor(inputs.ground, inputs.display, feet, meshes.sole_depth_mm)
    pelvis = [p[:, PELVIS] for p in paths.values()]
    people = np.concatenate(pelvis) if pelvis else np.zeros((0, 3))
    if not np.isfinite(people).all(1).any():
        people = inputs.display.optical_center
    grid = make_grid(floor, np.concatenate([people, inputs.display.optical_center]))
    return floor, grid


def render(
    inputs: RenderInputs,
    meshes: BodyMeshes,
    settings: RenderSettings,
    workdir: Path,
    progress: Callable[[int, int, str], None],
    check_cancelled: Callable[[], None],
) -> RenderOutputs:
    """Writes the requested views' videos, their previews and the top view into `workdir`."""
    n = inputs.num_frames
    width, height = output_size(
        inputs.video.width, inputs.video.height, settings.width, settings.height
    )
    out = RenderOutputs(width=width, height=height, fps=inputs.fps, frames=n)
    paths = {tid: meshes.joints_mm(tl) for tid, tl in inputs.timelines.items()}
    floor, grid = world_layout(inputs, meshes, paths)
    out.top_view = workdir / "top_view.png"
    write_top_view(
        out.top_view,
        floor,
        grid,
        inputs.display.optical_center,
        {tid: p[:, PELVIS] for tid, p in paths.items()},
    )
    previews = {view: PreviewCollector(n, float(inputs.fps)) for view in settings.views}
    out.videos = {view: workdir / f"{view}_view.mp4" for view in settings.views}
    stop = threading.Event()
    drawn = 0
    with gl_context() as ctx, contextlib.ExitStack() as stack:
        stack.callback(stop.set)
        scene = Scene(ctx, meshes.faces, meshes.num_vertices)
        views: dict[str, CameraView | WorldView] = {}
        if "camera" in settings.views:
            views["camera"] = CameraView(scene, inputs.display, width, height, settings.opacity)
        if "world" in settings.views:
            views["world"] = WorldView(
                scene, inputs.viewer, inputs.display, floor, grid, width, height
            )
        writers = {
            view: stack.enter_context(
                _writer(
                    out.videos[view],
                    inputs.fps,
                    settings,
                    inputs.video.path if view == "camera" else None,
                )
            )
            for view in settings.views
        }
        backgrounds = (
            _repeated(inputs.video.frames((height, width)), settings.video_frame_repeat)
            if "camera" in views
            else itertools.repeat(None)
        )
        frames = _prefetched(backgrounds, PREFETCH_FRAMES, stop)
        posed = _prefetched(meshes.frames(inputs.timelines, n), PREFETCH_FRAMES, stop)
        stack.callback(frames.close)
        stack.callback(posed.close)
        for i in range(n):
            check_cancelled()
            background, frame_meshes = next(frames), next(posed)
            scene.upload_meshes(frame_meshes)
            drawn += len(frame_meshes)
            for view, renderer in views.items():
                image = renderer.render(i, background) if view == "camera" else renderer.render(i)
                writers[view].append_data(image)
                previews[view].offer(i, image)
            progress(i + 1, n, f"rendered frame {i + 1}/{n}")
    for view, collector in previews.items():
        out.stills[view] = workdir / f"{view}_view_stills.png"
        collector.write_stills(out.stills[view])
        out.clips[view] = workdir / f"{view}_view_clip.gif"
        collector.write_clip(out.clips[view])
    out.counts = {
        "frames": n,
        "tracks": len(inputs.timelines),
        "person_frames": drawn,
        "width": width,
        "height": height,
    }
    return out
