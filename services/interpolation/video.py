"""Video in and out for the interpolation stage.

In: the ingest stage's output (constant frame rate, 8-bit yuv420p H.264, no rotation), checked
packet by packet before any decoding, then decoded frame by frame. Each frame keeps its exact
YUV planes (written out unchanged as the even output frames); an interpolator that needs RGB
(RIFE) gets it converted with the stream's own matrix and range.

Out: raw frames piped into ffmpeg (libx264, 8-bit yuv420p, or yuvj420p for a full-range
input, constant rate at twice the input's), tagged with the input's colour range, matrix,
primaries and transfer, with the source's audio stream copied unchanged.
"""

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

from services.common.errors import InvalidInput

X264_PRESET = "veryfast"
KEYFRAME_INTERVAL_S = 2.0
# Frame durations may jitter this much and still count as a constant rate (as in ingest's probe).
CFR_TOLERANCE = 0.005
CFR_JITTER_S = 0.001
# 8-bit 4:2:0; ffmpeg's H.264 decoder reports full-range streams as yuvj420p.
PIXEL_FORMATS = ("yuv420p", "yuvj420p")
_REINGEST = "run the ingest stage on the source and interpolate its output video"
# Stream colour matrices swscale knows (ffmpeg AVColorSpace -> PyAV Colorspace); any other,
# unspecified included, is converted as ITU-R BT.601, swscale's default, both ways.
_MATRICES = {1: Colorspace.ITU709, 4: Colorspace.FCC, 5: Colorspace.ITU601,
             6: Colorspace.ITU601, 7: Colorspace.SMPTE240M}  # fmt: skip


@dataclass(frozen=True)
class VideoFacts:
    """What the stage needs to know of its input video."""

    frame_count: int
    frame_rate: Fraction
    width: int
    height: int
    has_audio: bool
    pix_fmt: str  # yuv420p, or yuvj420p (its full-range variant)
    color_range: int  # ffmpeg AVColorRange of the stream: 0 unspecified, 1 limited, 2 full
    colorspace: int  # ffmpeg AVColorSpace (matrix)
    color_primaries: int
    color_trc: int

    @property
    def full_range(self) -> bool:
        return self.color_range == 2

    @property
    def matrix(self) -> Colorspace:
        return _MATRICES.get(self.colorspace, Colorspace.ITU601)

    @property
    def swscale_range(self) -> ColorRange:
        return ColorRange.JPEG if self.full_range else ColorRange.MPEG


@dataclass
class SourceFrame:
    """One frame: its 4:2:0 planes as decoded (Y, then U, then V: uint8 [H * 3 / 2, W]) and,
    made on first use, RGB in the stream's matrix and range."""

    yuv: np.ndarray
    facts: VideoFacts

    @property
    def luma(self) -> np.ndarray:
        """The Y plane, [H, W]."""
        h, w = self.facts.height, self.facts.width
        return self.yuv.reshape(-1)[: h * w].reshape(h, w)

    @property
    def chroma(self) -> np.ndarray:
        """U and V, [H / 2, W / 2, 2]."""
        h, w = self.facts.height, self.facts.width
        planes = self.yuv.reshape(-1)[h * w :].reshape(2, h // 2, w // 2)
        return np.ascontiguousarray(planes.transpose(1, 2, 0))

    @cached_property
    def rgb(self) -> np.ndarray:
        """uint8 [H, W, 3]."""
        frame = av.VideoFrame.from_ndarray(self.yuv, format=self.facts.pix_fmt)
        return frame.reformat(
            format="rgb24", src_colorspace=self.facts.matrix,
            src_color_range=self.facts.swscale_range,
        ).to_ndarray()  # fmt: skip


def join_planes(luma: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """Y [H, W] and U, V [H / 2, W / 2, 2] -> 4:2:0 planes [H * 3 / 2, W]."""
    h, w = luma.shape
    planes = (luma.reshape(-1), chroma[..., 0].reshape(-1), chroma[..., 1].reshape(-1))
    return np.concatenate(planes).reshape(h * 3 // 2, w)


def _not_ingested(name: str, problem: str) -> InvalidInput:
    return InvalidInput(f"{name} is not the ingest stage's output: {problem}; {_REINGEST}")


def inspect_video(path: Path, name: str = "the video") -> VideoFacts:
    """Checks that the video is ingest's output and counts its frames (demuxing only).

    InvalidInput names what is wrong: not a video, not 8-bit yuv420p H.264, rotated, odd
    sizes, a variable frame rate, or fewer than two frames.
    """
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise InvalidInput(f"{name} is not a readable video file: {e}") from None
    with container:
        if not container.streams.video:
            raise InvalidInput(f"{name} has no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context
        if codec.name != "h264" or codec.pix_fmt not in PIXEL_FORMATS:
            raise _not_ingested(name, f"its video is {codec.name} {codec.pix_fmt}, not h264 "
                                "yuv420p")  # fmt: skip
        if codec.width % 2 or codec.height % 2:
            raise _not_ingested(name, f"{codec.width}x{codec.height} has an odd side")
        timestamps = []
        try:
            for packet in container.demux(stream):
                if packet.size:
                    timestamps.append(packet.pts if packet.pts is not None else packet.dts)
        except av.error.FFmpegError as e:
            raise InvalidInput(f"{name} is corrupt: {e}") from None
        facts = VideoFacts(
            frame_count=len(timestamps),
            frame_rate=_constant_rate(stream, timestamps, name),
            width=codec.width,
            height=codec.height,
            has_audio=bool(container.streams.audio),
            pix_fmt=codec.pix_fmt,
            color_range=2 if codec.pix_fmt == "yuvj420p" else int(codec.color_range),
            colorspace=int(codec.colorspace),
            color_primaries=int(codec.color_primaries),
            color_trc=int(codec.color_trc),
        )
    rotation = _rotation(path)
    if rotation:
        raise _not_ingested(name, f"it carries a rotation of {rotation} degrees")
    if facts.frame_count < 2:
        raise InvalidInput(
            f"{name} has {facts.frame_count} frame(s); doubling the frame rate needs at least 2"
        )
    return facts


def _rotation(path: Path) -> int:
    """The display rotation of the first frame, degrees (ingest applies and drops it)."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0), None)
    return round((frame.rotation or 0) / 90) * 90 % 360 if frame is not None else 0


def _constant_rate(stream: av.VideoStream, timestamps: list, name: str) -> Fraction:
    """The frame rate; InvalidInput unless the frame durations are constant, within the jitter
    ingest's probe allows (a tick of the time base, a millisecond, or 0.5%)."""
    if any(t is None for t in timestamps):
        raise _not_ingested(name, "its frames have no timestamps")
    steps = np.diff(sorted(timestamps))
    rate = stream.average_rate or stream.guessed_rate
    if len(steps):
        step = float(steps.mean())
        slack = max(1.0, CFR_JITTER_S / float(stream.time_base), CFR_TOLERANCE * step)
        if steps.min() <= 0 or np.abs(steps - step).max() > slack:
            raise _not_ingested(name, f"its frame durations vary ({steps.min()}..{steps.max()} "
                                f"ticks of {stream.time_base} s)")  # fmt: skip
        measured = 1 / (Fraction(int(steps.sum()), len(steps)) * stream.time_base)
        if rate is None or abs(float(rate) - float(measured)) > 0.002 * float(measured):
            rate = measured.limit_denominator(1001)
    if not rate:
        raise _not_ingested(name, "it has no frame rate")
    return Fraction(rate)


def decode_frames(path: Path, facts: VideoFacts) -> Iterator[SourceFrame]:
    """The frames in order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield SourceFrame(frame.to_ndarray(), facts)


def rgb_to_yuv(rgb: np.ndarray, facts: VideoFacts) -> np.ndarray:
    """RGB -> 4:2:0 planes [H * 3 / 2, W] with the stream's matrix and range."""
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    return frame.reformat(
        format=facts.pix_fmt, dst_colorspace=facts.matrix, dst_color_range=facts.swscale_range
    ).to_ndarray()


def _color_options(facts: VideoFacts) -> list[str]:
    return [
        "-color_range", str(facts.color_range), "-colorspace", str(facts.colorspace),
        "-color_primaries", str(facts.color_primaries), "-color_trc", str(facts.color_trc),
    ]  # fmt: skip


def encoder_command(
    output: Path, source: Path, facts: VideoFacts, rate: Fraction, crf: int
) -> list[str]:
    """ffmpeg reading raw yuv420p frames on stdin and the source's audio, writing H.264."""
    # Imported here: the RIFE backend (rife.py) needs this module's colour conversions but not
    # the encoder, and benchmarks/gpu_check.sh runs it where imageio-ffmpeg (68 MB) is absent.
    import imageio_ffmpeg

    keyint = max(1, round(KEYFRAME_INTERVAL_S * rate))
    return [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", facts.pix_fmt, "-s", f"{facts.width}x{facts.height}",
        "-framerate", f"{rate.numerator}/{rate.denominator}", *_color_options(facts),
        "-i", "pipe:0", "-i", str(source),
        "-map", "0:v:0", "-map", "1:a:0?", "-c:a", "copy",
        "-c:v", "libx264", "-preset", X264_PRESET, "-crf", str(crf), "-g", str(keyint),
        "-pix_fmt", facts.pix_fmt, "-fps_mode", "passthrough", *_color_options(facts),
        "-movflags", "+faststart", str(output),
    ]  # fmt: skip


class VideoEncoder:
    """An ffmpeg process that encodes the frames written to it; a context manager that kills
    it on error and checks its exit status on success."""

    def __init__(self, output: Path, source: Path, facts: VideoFacts, rate: Fraction, crf: int):
        self.log_path = output.with_name(output.name + ".ffmpeg.log")
        self._log = open(self.log_path, "w+")  # noqa: SIM115 - closed in __exit__
        self._proc = subprocess.Popen(
            encoder_command(output, source, facts, rate, crf),
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log,
        )  # fmt: skip
        self.frames_written = 0

    def write(self, yuv: np.ndarray) -> None:
        try:
            self._proc.stdin.write(np.ascontiguousarray(yuv).data)
        except BrokenPipeError:
            raise RuntimeError(f"the encoder stopped: {self._errors()}") from None
        self.frames_written += 1

    def _errors(self) -> str:
        self._log.seek(0)
        return " | ".join(self._log.read().strip().splitlines()[-3:])

    def __enter__(self) -> "VideoEncoder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._proc.stdin.close()
                if self._proc.wait() != 0:
                    raise RuntimeError(
                        f"ffmpeg failed with exit code {self._proc.returncode}: {self._errors()}"
                    )
            else:
                self._proc.kill()
                self._proc.wait()
        finally:
            self._log.close()


def count_frames(path: Path) -> int:
    """Video packets of a file (its exact frame count; nothing is decoded)."""
    with av.open(str(path)) as container:
        return sum(1 for p in container.demux(video=0) if p.size)
