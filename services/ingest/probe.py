"""Probing a video by demuxing: exact frame count, frame rate, size, rotation, audio.

Frames are counted packet by packet (no decoding); only the first frame is decoded, to prove
the stream decodes and to read the display rotation.
"""

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from services.common.errors import InvalidInput
from services.common.formats.video import ProbeInfo

# Frame durations may jitter by one tick of the time base, by a millisecond (the timestamp
# precision of Matroska) or by this fraction, and still count as a constant frame rate.
_CFR_TOLERANCE = 0.005
_CFR_JITTER_S = 0.001
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG: full (pc) range


@dataclass(frozen=True)
class VideoProbe:
    """ProbeInfo plus the container facts that decide how to normalize the video."""

    info: ProbeInfo
    frame_rate: Fraction
    constant_frame_rate: bool
    sample_aspect_ratio: Fraction
    audio_codec: str
    format_name: str
    full_range: bool = False  # pc (0-255) levels: yuvj* formats or a pc colour range tag

    @property
    def output_frame_count(self) -> int:
        """Frames of the constant-rate normalized video: the source's own count, or for a
        variable frame rate its duration (first frame's start to last frame's end) x rate."""
        if self.constant_frame_rate:
            return self.info.frame_count
        return max(1, round(self.info.duration_s * float(self.frame_rate)))


def _video_stream(container: av.container.InputContainer, name: str) -> av.VideoStream:
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise InvalidInput(f"{name} has no video stream (found: {_stream_kinds(container)})")


def _stream_kinds(container: av.container.InputContainer) -> str:
    kinds = [s.type for s in container.streams]
    return ", ".join(kinds) if kinds else "no streams"


def _corrupt(name: str, detail: str) -> InvalidInput:
    return InvalidInput(
        f"the video stream of {name} is corrupt ({detail}); re-download or re-export the file"
    )


def _frame_rate(stream: av.VideoStream, frame_s: float | None, constant: bool) -> Fraction:
    candidates = [r for r in (stream.average_rate, stream.guessed_rate) if r and 0 < r <= 1000]
    if frame_s is None:
        if not candidates:
            raise InvalidInput("the video has neither timestamps nor a frame rate")
        return Fraction(candidates[0])
    measured = 1 / frame_s
    for rate in candidates:
        if abs(float(rate) - measured) <= 0.002 * measured:
            return Fraction(rate)
    if not constant and stream.guessed_rate and stream.guessed_rate <= 1.5 * measured:
        return Fraction(stream.guessed_rate)
    return Fraction(measured).limit_denominator(1001)


def _decode_first(codec: av.VideoCodecContext, packet: av.Packet | None) -> av.VideoFrame | None:
    frames = codec.decode(packet)
    return frames[0] if frames else None


def probe_video(path: Path, name: str | None = None) -> VideoProbe:
    """Probes a video file; InvalidInput when it is not a video, has no frames or is corrupt."""
    name = name or Path(path).name
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise InvalidInput(f"{name} is not a readable video file: {e.strerror or e}") from e
    with container:
        stream = _video_stream(container, name)
        codec = stream.codec_context
        timestamps: list[int] = []
        last_pts, last_duration = None, 0
        first_frame = None
        count = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.is_corrupt:
                    raise _corrupt(name, f"packet {count} is flagged corrupt")
                count += 1
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is not None:
                    timestamps.append(ts)
                    if last_pts is None or ts > last_pts:
                        last_pts, last_duration = ts, packet.duration or 0
                if first_frame is None:
                    first_frame = _decode_first(codec, packet)
            if count and first_frame is None:
                first_frame = _decode_first(codec, None)
        except av.error.FFmpegError as e:
            raise _corrupt(name, f"reading frame {count} failed: {e.strerror or e}") from e
        if count == 0:
            raise InvalidInput(f"{name} has a video stream with zero frames")
        if stream.frames and count < stream.frames:
            raise _corrupt(name, f"the index lists {stream.frames} frames, {count} are present")
        if first_frame is None:
            raise _corrupt(name, "no frame could be decoded")

        timestamps.sort()
        steps = [b - a for a, b in zip(timestamps, timestamps[1:], strict=False)]
        if len(timestamps) == count and steps and min(steps) > 0:
            step = (timestamps[-1] - timestamps[0]) / len(steps)
            slack = max(1.0, _CFR_JITTER_S / stream.time_base, _CFR_TOLERANCE * step)
            constant = all(abs(s - step) <= slack for s in steps)
            frame_s = float(step * stream.time_base)
        else:
            constant, frame_s = count == 1, None
        rate = _frame_rate(stream, frame_s, constant)
        if constant or frame_s is None:
            duration = count / float(rate)
        else:
            # From the first frame's start to the last frame's end (its own duration when the
            # container gives one, else the last step).
            last = last_duration or steps[-1]
            duration = float((timestamps[-1] - timestamps[0] + last) * stream.time_base)
        audio = container.streams.audio
        info = ProbeInfo(
            frame_count=count,
            fps=float(rate),
            width=codec.width,
            height=codec.height,
            duration_s=duration,
            rotation_deg=round((first_frame.rotation or 0) / 90) * 90 % 360,
            has_audio=bool(audio),
            codec=codec.codec.canonical_name,
            pix_fmt=codec.pix_fmt or first_frame.format.name,
        )
        return VideoProbe(
            info=info,
            frame_rate=rate,
            constant_frame_rate=constant,
            sample_aspect_ratio=Fraction(stream.sample_aspect_ratio or 1),
            audio_codec=audio[0].codec_context.name if audio else "",
            format_name=container.format.name,
            full_range=info.pix_fmt.startswith("yuvj")
            or _FULL_RANGE in (codec.color_range, first_frame.color_range),
        )
