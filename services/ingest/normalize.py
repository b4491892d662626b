"""Normalization for the later stages: constant frame rate, 8-bit yuv420p H.264 in MP4, rotation
applied, height at most `max_height`, optionally cut to a frame-exact range.

A compliant source without a cut is stream-copied into a fresh MP4 (no re-encode); anything
else is decoded and re-encoded with libx264 by the static ffmpeg of `imageio-ffmpeg`.
"""

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg

from services.common.errors import InvalidInput
from services.ingest.probe import VideoProbe
from services.ingest.timerange import TimeRange

X264_PRESET = "superfast"
X264_CRF = 17
KEYFRAME_INTERVAL_S = 2.0
AUDIO_BITRATE = "160k"
# Audio codecs that MP4 carries as they are; others are converted to AAC.
_MP4_AUDIO = {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}
_DECODE_ERRORS = ("Invalid data", "error while decoding", "corrupt", "Error processing packet")

ProgressFn = Callable[[int, int, str, str], None]


@dataclass(frozen=True)
class NormalizationPlan:
    """What to do with a source: which frames, which size, and whether to re-encode (why)."""

    first_frame: int
    frame_count: int
    frame_rate: Fraction
    width: int
    height: int
    cut: bool
    reasons: tuple[str, ...]

    @property
    def reencode(self) -> bool:
        return bool(self.reasons)


def _even(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


def plan_normalization(
    probe: VideoProbe, time_range: TimeRange | None, max_height: int
) -> NormalizationPlan:
    """Decides frames, output size and re-encode reasons; InvalidInput for an out-of-range cut."""
    info = probe.info
    reasons = []
    if info.codec != "h264":
        reasons.append(f"codec {info.codec} is not h264")
    if info.pix_fmt != "yuv420p":
        reasons.append(f"pixel format {info.pix_fmt} is not yuv420p")
    elif probe.full_range:
        reasons.append("full (pc) colour range")
    if not probe.constant_frame_rate:
        reasons.append("variable frame rate")
    if info.rotation_deg:
        reasons.append(f"rotation metadata of {info.rotation_deg} degrees")
    if probe.sample_aspect_ratio != 1:
        reasons.append(f"non-square pixels (aspect {probe.sample_aspect_ratio})")
    width, height = info.width * probe.sample_aspect_ratio, info.height
    if info.rotation_deg in (90, 270):
        width, height = height, width
    if height > max_height:
        reasons.append(f"height {height} above max_height {max_height}")
        width, height = width * max_height / height, max_height
    if reasons:
        width, height = _even(width), _even(height)
    first, count = 0, probe.output_frame_count
    if time_range is not None:
        first, count = time_range.frame_span(float(probe.frame_rate), count)
        reasons.append(f"cut to {time_range}")
    return NormalizationPlan(
        first,
        count,
        probe.frame_rate,
        int(width),
        int(height),
        time_range is not None,
        tuple(reasons),
    )


def _rate(rate: Fraction) -> str:
    return f"{rate.numerator}/{rate.denominator}"


def video_filters(plan: NormalizationPlan) -> str:
    """The filter chain of a re-encode: constant frame rate, size, 8-bit tv-range yuv420p.

    Output frame k (at k / rate) shows the source frame nearest to that time (ties go to the
    later one): each frame's timestamp is moved back to the midpoint with its predecessor, the
    start of the span of time it is nearest to, and `fps` with round=up then shows at every
    output time the last frame that started at or before it. `tpad` repeats the last frame so
    that the output always reaches `frame_count` frames (`-frames:v` ends it there). The scaler
    converts full-range (pc, yuvj420p) input to tv range, which the encoder is told too.
    """
    midpoint = "if(isnan(PREV_INPTS),PTS,(PTS+PREV_INPTS)/2)-STARTPTS"
    return ",".join(
        [
            f"setpts='{midpoint}'",
            f"fps={_rate(plan.frame_rate)}:round=up",
            "tpad=stop=-1:stop_mode=clone",
            f"scale={plan.width}:{plan.height}:out_range=tv",
            "format=yuv420p",
            "setsar=1",
        ]
    )


def ffmpeg_command(src: Path, dst: Path, probe: VideoProbe, plan: NormalizationPlan) -> list[str]:
    """The ffmpeg command line that carries out a plan."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y"]
    if not plan.reencode:
        audio = "copy" if probe.audio_codec in _MP4_AUDIO else "aac"
        return [
            *cmd,
            *("-i", str(src), "-map", "0:v:0", "-map", "0:a:0?", "-c:v", "copy"),
            *("-c:a", audio, "-movflags", "+faststart", "-progress", "pipe:1", str(dst)),
        ]
    cmd.append("-xerror")
    if plan.first_frame:
        # Input seeking decodes from the preceding keyframe and drops every frame before this
        # time; half a frame before `first_frame` makes the first kept frame exactly that one.
        cmd += ["-ss", f"{float((plan.first_frame - 0.5) / plan.frame_rate):.6f}"]
    cmd += ["-i", str(src), "-map", "0:v:0", "-map", "0:a:0?"]
    if plan.cut:
        cmd += ["-t", f"{float(plan.frame_count / plan.frame_rate):.6f}"]
    keyint = max(1, round(KEYFRAME_INTERVAL_S * plan.frame_rate))
    return [
        *cmd,
        *("-vf", video_filters(plan), "-fps_mode", "passthrough"),
        *("-frames:v", str(plan.frame_count), "-color_range", "tv"),
        *("-c:v", "libx264", "-preset", X264_PRESET, "-crf", str(X264_CRF)),
        *("-pix_fmt", "yuv420p", "-g", str(keyint)),
        *("-c:a", "aac", "-b:a", AUDIO_BITRATE),
        *("-movflags", "+faststart", "-progress", "pipe:1", "-stats_period", "0.25", str(dst)),
    ]


def normalize_video(
    src: Path,
    dst: Path,
    probe: VideoProbe,
    plan: NormalizationPlan,
    progress: ProgressFn,
    name: str,
) -> None:
    """Writes the normalized video; `progress(done, total, message, step)` may raise to cancel."""
    step, message = ("encode", "re-encoding") if plan.reencode else ("copy", "copying streams")
    log_path = dst.with_name(dst.name + ".ffmpeg.log")
    with open(log_path, "w+") as log:
        proc = subprocess.Popen(
            ffmpeg_command(src, dst, probe, plan),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            for line in proc.stdout:
                key, _, value = line.strip().partition("=")
                if key == "frame" and value.isdigit():
                    progress(int(value), plan.frame_count, message, step)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        errors = log.read().strip()
    if proc.returncode != 0:
        tail = " | ".join(errors.splitlines()[-3:])
        if any(marker in errors for marker in _DECODE_ERRORS):
            raise InvalidInput(
                f"the video stream of {name} is corrupt and cannot be decoded ({tail}); "
                "re-download or re-export the file"
            )
        raise RuntimeError(f"ffmpeg failed with exit code {proc.returncode}: {tail}")
    progress(plan.frame_count, plan.frame_count, message, step)
