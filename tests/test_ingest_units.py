"""Ingest building blocks in-process: time ranges, sources, yt-dlp options, probe, normalization."""

import hashlib
import random
import re
from pathlib import Path

import av
import numpy as np
import pytest
import yt_dlp

from services.common.errors import ArtifactNotFound, InvalidInput
from services.ingest import download
from services.ingest.normalize import normalize_video, plan_normalization
from services.ingest.probe import probe_video
from services.ingest.sources import SourceKind, classify_source, fetch_source
from services.ingest.stage import make_request, run_ingest
from services.ingest.timerange import TimeRange, parse_time_range
from tests.support.videos import INDEX_HEIGHT as _H
from tests.support.videos import INDEX_WIDTH as _W
from tests.support.videos import read_indices, write_indexed_video


def video_packet_digest(path: Path) -> str:
    """sha256 over the video packets' bytes: equal for a stream copy, not after a re-encode."""
    digest = hashlib.sha256()
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            digest.update(bytes(packet))
    return digest.hexdigest()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Path:
    return write_indexed_video(tmp_path_factory.mktemp("v") / "indexed.mp4", 150, audio=True)


# --- time ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("00:45-01:25", 45, 85),
        ("1:02:03.5-1:02:10", 3723.5, 3730),
        (" 00:00.25 - 00:01 ", 0.25, 1),
        ("90:00-91:30", 5400, 5490),
    ],
)
def test_time_range_parses(text, start, end):
    assert parse_time_range(text) == TimeRange(start, end)


def test_empty_time_range_means_whole_video():
    assert parse_time_range("") is None
    assert parse_time_range("   ") is None


@pytest.mark.parametrize(
    "text",
    [
        "45-85",
        "00:45",
        "00:45-",
        "aa:bb-cc:dd",
        "00:45-01:25-02:00",
        "00:61-01:00",
        "01:60:00-02:00:00",
        "01:00-00:30",
        "00:10-00:10",
    ],
)
def test_malformed_time_range_is_invalid(text):
    with pytest.raises(InvalidInput, match="time_range"):
        parse_time_range(text)


def test_frame_span_is_half_open_on_frame_times():
    assert TimeRange(20, 40).frame_span(30, 1800) == (600, 600)
    assert TimeRange(3.3, 4).frame_span(30, 300) == (99, 21)
    assert TimeRange(3.31, 4.01).frame_span(30, 300) == (100, 21)
    assert TimeRange(0, 60).frame_span(30, 1800) == (0, 1800)
    assert TimeRange(1, 2).frame_span(30000 / 1001, 300) == (30, 30)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (0, 60.1, "ends outside the video: its end 00:01:00.100 is past the video's end at "
                  "00:01:00.000 (1800 frames at 30.000 fps); choose an end of at most 00:01:00"),
        (61, 62, "starts outside the video: its start 00:01:01.000 is at or past the video's "
                 "end at 00:01:00.000 (1800 frames at 30.000 fps); choose a start before 00:01"),
        (60, 61, "starts outside the video: its start 00:01:00.000"),
    ],
)  # fmt: skip
def test_frame_span_outside_video_is_invalid(start, end, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        TimeRange(start, end).frame_span(30, 1800)


def test_frame_span_without_frames_is_invalid():
    with pytest.raises(InvalidInput, match="no frame"):
        TimeRange(1.001, 1.02).frame_span(30, 1800)
    # At the very end too: the range lies inside the video but holds no frame's start time.
    with pytest.raises(InvalidInput, match="contains no frame at 30.000 fps"):
        TimeRange(59.99, 60).frame_span(30, 1800)


def test_a_one_frame_video_is_one_frame():
    with pytest.raises(InvalidInput, match=r"\(1 frame at 30.000 fps\)"):
        TimeRange(0, 1).frame_span(30, 1)


# --- sources -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "dQw4w9WgXcQ",
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=42s",
        "https://youtu.be/dQw4w9WgXcQ?si=abc",
        "https://m.youtube.com/shorts/dQw4w9WgXcQ",
        "https://www.youtube.com/embed/dQw4w9WgXcQ",
    ],
)
def test_youtube_sources_become_the_canonical_watch_url(text, local_store):
    source = classify_source(text, local_store)
    assert source.kind is SourceKind.YOUTUBE
    assert source.location == "https://www.youtube.com/watch?v=dQw4w9WgXcQ"


def test_source_kinds(local_store, tmp_path):
    key = "uploads/a.mp4"
    local_store.put_bytes(key, b"x", "video/mp4")
    assert classify_source(local_store.uri(key), local_store).location == key
    assert classify_source(local_store.uri(key), local_store).kind is SourceKind.STORE
    outside = tmp_path / "elsewhere.mp4"
    assert classify_source(outside.as_uri(), local_store).location == str(outside)
    assert classify_source(str(outside), local_store).kind is SourceKind.LOCAL
    assert classify_source("http://127.0.0.1:9/x.mp4", local_store).kind is SourceKind.URL


@pytest.mark.parametrize("text", ["ftp://host/x.mp4", "rtsp://cam/stream", "gopher://x"])
def test_unsupported_url_scheme_is_invalid(text, local_store):
    with pytest.raises(InvalidInput, match="unsupported URL scheme"):
        classify_source(text, local_store)


def test_youtube_url_without_video_is_invalid(local_store):
    with pytest.raises(InvalidInput, match="names no video"):
        classify_source("https://www.youtube.com/feed/trending", local_store)


def test_missing_local_file_is_not_found(local_store, tmp_path):
    source = classify_source(str(tmp_path / "missing.mp4"), local_store)
    with pytest.raises(ArtifactNotFound, match="does not exist"):
        fetch_source(source, local_store, tmp_path, 1080, lambda done, total: None)


# --- yt-dlp options (no network) ---------------------------------------------------------------


def _fake_formats() -> list[dict]:
    """YouTube-like formats, worst to best, as yt-dlp orders them before selecting."""
    rows = [
        ("251", "webm", None, "none", "opus"),
        ("140", "m4a", None, "none", "mp4a.40.2"),
        ("18", "mp4", 360, "avc1.42001E", "mp4a.40.2"),
        ("136", "mp4", 720, "avc1.4d401f", "none"),
        ("137", "mp4", 1080, "avc1.640028", "none"),
        ("248", "webm", 1080, "vp9", "none"),
        ("399", "mp4", 1080, "av01.0.08M.08", "none"),
        ("401", "mp4", 2160, "avc1.640033", "none"),
    ]
    return [
        {"format_id": f, "ext": ext, "height": h, "vcodec": v, "acodec": a, "url": f"https://x/{f}"}
        for f, ext, h, v, a in rows
    ]


@pytest.mark.parametrize(("max_height", "expected"), [(1080, "137+140"), (720, "136+140")])
def test_youtube_format_selection_takes_mp4_up_to_max_height_without_av1(max_height, expected):
    selector = yt_dlp.YoutubeDL({"quiet": True}).build_format_selector(
        download.format_selector(max_height)
    )
    chosen = list(selector({"formats": _fake_formats(), "incomplete_formats": False}))
    assert [f["format_id"] for f in chosen] == [expected]


def test_ytdlp_options_follow_the_reference(tmp_path):
    options = download.ytdlp_options(tmp_path, 1080, lambda done, total: None)
    assert options["format"].startswith(
        "bestvideo[ext=mp4][height<=?1080][vcodec!^=?av01]+bestaudio[ext=m4a]"
    )
    assert options["merge_output_format"] == "mp4"
    assert Path(options["ffmpeg_location"]).is_file()
    assert options["updatetime"] is False  # --no-mtime
    assert options["noplaylist"] is True
    assert options["outtmpl"] == str(tmp_path / "source.%(ext)s")


def test_ytdlp_progress_hook_reports_bytes(tmp_path):
    seen = []
    options = download.ytdlp_options(tmp_path, 1080, lambda done, total: seen.append((done, total)))
    options["progress_hooks"][0]({"status": "downloading", "downloaded_bytes": 5, "total_bytes": 9})
    options["progress_hooks"][0]({"status": "finished", "downloaded_bytes": 9, "total_bytes": 9})
    assert seen == [(5, 9)]


# --- probe ---------------------------------------------------------------------------------------


def test_probe_counts_frames_and_reads_the_rate(indexed):
    probe = probe_video(indexed)
    assert probe.info.frame_count == 150
    assert probe.frame_rate == 30
    assert probe.info.duration_s == pytest.approx(5.0)
    assert (probe.info.width, probe.info.height) == (_W, _H)
    assert probe.info.has_audio and probe.audio_codec == "aac"
    assert probe.constant_frame_rate
    assert (probe.info.codec, probe.info.pix_fmt, probe.info.rotation_deg) == ("h264", "yuv420p", 0)


def test_probe_reads_rotation(tmp_path):
    probe = probe_video(write_indexed_video(tmp_path / "r.mp4", 10, rotation=90))
    assert probe.info.rotation_deg == 90
    assert not probe.info.has_audio


def test_probe_detects_variable_frame_rate(tmp_path):
    pts = [round(i * 1000 / 30 + (8 if i % 3 == 0 else 0)) for i in range(90)]
    probe = probe_video(write_indexed_video(tmp_path / "vfr.mkv", 90, pts_of=pts))
    assert not probe.constant_frame_rate
    assert probe.info.frame_count == 90


def test_probe_rejects_a_text_file(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("not a video\n" * 100)
    with pytest.raises(InvalidInput, match="not a readable video"):
        probe_video(path)


def test_probe_rejects_audio_only(tmp_path):
    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=48000)
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, 48000), np.float32), "fltp", "mono")
        chunk.sample_rate = 48000
        container.mux(stream.encode(chunk))
        container.mux(stream.encode())
    with pytest.raises(InvalidInput, match="no video stream"):
        probe_video(path)


def write_zero_frame_video(path: Path) -> Path:
    """A Matroska file with a video stream that holds no frame (and a second of audio)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        sound = container.add_stream("aac", rate=48000)
        container.start_encoding()
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, 48000), np.float32), "fltp", "mono")
        chunk.sample_rate = 48000
        container.mux(sound.encode(chunk))
        container.mux(sound.encode())
    return path


def test_probe_rejects_zero_frames(tmp_path):
    with pytest.raises(InvalidInput, match="zero frames"):
        probe_video(write_zero_frame_video(tmp_path / "empty.mkv"))


def write_truncated_video(src: Path, path: Path) -> Path:
    """The first half of a faststart MP4, as left by an interrupted download."""
    data = src.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_probe_rejects_truncated_files(indexed, tmp_path):
    # PyAV writes the index (moov) last: half a file has no index at all.
    with pytest.raises(InvalidInput, match="not a readable video"):
        probe_video(write_truncated_video(indexed, tmp_path / "half.mp4"))
    # The normalized copy has its index first: half of it indexes frames that are missing.
    normalize_file(indexed, tmp_path / "faststart.mp4")
    with pytest.raises(InvalidInput, match="is corrupt"):
        probe_video(write_truncated_video(tmp_path / "faststart.mp4", tmp_path / "half2.mp4"))


# --- normalization -------------------------------------------------------------------------------


def normalize_file(src: Path, dst: Path, time_range: str = "", max_height: int = 1080):
    probe = probe_video(src)
    plan = plan_normalization(probe, parse_time_range(time_range), max_height)
    events = []
    normalize_video(src, dst, probe, plan, lambda *event: events.append(event), src.name)
    return plan, probe_video(dst), events


def test_compliant_source_is_stream_copied(indexed, tmp_path):
    plan, out, events = normalize_file(indexed, tmp_path / "out.mp4")
    assert not plan.reencode
    assert video_packet_digest(tmp_path / "out.mp4") == video_packet_digest(indexed)
    assert out.info.frame_count == 150 and out.info.has_audio
    assert events[-1] == (150, 150, "copying streams", "copy")


@pytest.mark.parametrize(
    ("time_range", "first", "count"),
    [("00:01.5-00:03", 45, 45), ("00:00-00:00.1", 0, 3), ("00:04.01-00:05", 121, 29)],
)
def test_cut_is_frame_accurate(indexed, tmp_path, time_range, first, count):
    plan, out, events = normalize_file(indexed, tmp_path / "cut.mp4", time_range)
    assert plan.reencode and plan.cut
    assert read_indices(tmp_path / "cut.mp4") == list(range(first, first + count))
    assert out.info.frame_count == count
    assert out.constant_frame_rate and out.frame_rate == 30
    assert events[-1][:2] == (count, count)


def test_cut_past_the_end_is_invalid(indexed, tmp_path):
    with pytest.raises(InvalidInput, match="outside the video"):
        normalize_file(indexed, tmp_path / "cut.mp4", "00:04-00:06")


def test_rotation_is_applied(tmp_path):
    src = write_indexed_video(tmp_path / "rot.mp4", 30, rotation=90)
    plan, out, _ = normalize_file(src, tmp_path / "out.mp4")
    assert plan.reencode and "rotation" in plan.reasons[0]
    assert (out.info.width, out.info.height, out.info.rotation_deg) == (_H, _W, 0)
    # The frames were turned counter-clockwise; turning them back shows the indices again.
    assert read_indices(tmp_path / "out.mp4", quarter_turns=-1) == list(range(30))


def _vfr_timestamps(rates_and_counts: list[tuple[float, int]]) -> list[int]:
    """Millisecond timestamps of frames shown at each (rate, count) in turn."""
    pts, t = [], 0.0
    for rate, count in rates_and_counts:
        for _ in range(count):
            pts.append(round(t))
            t += 1000 / rate
    return pts


def nearest_frames(pts_ms: list[int], rate: float, count: int) -> list[int]:
    """For each output frame k (at k / rate), the source frame nearest in time; the test
    timestamps are chosen so that no two source frames are nearly as near (2 ms)."""
    pts = np.asarray(pts_ms, float) - pts_ms[0]
    nearest = []
    for k in range(count):
        distance = np.abs(pts - k * 1000 / rate)
        first, second = np.sort(distance)[:2]
        assert second - first >= 2, f"output frame {k} is ambiguous"
        nearest.append(int(distance.argmin()))
    return nearest


@pytest.mark.parametrize(
    "pts",
    [
        [round(i * 1000 / 30 + (8 if i % 3 == 0 else 0)) for i in range(90)],  # jitter
        _vfr_timestamps([(24, 25), (30, 34), (50, 31)]),  # the rate changes twice
        _vfr_timestamps([(60, 21), (15, 10), (24, 30)]),  # a slow stretch between fast ones
    ],
    ids=["jitter", "24-30-50", "60-15-24"],
)
def test_variable_frame_rate_becomes_constant_showing_the_nearest_frames(tmp_path, pts):
    src = write_indexed_video(tmp_path / "vfr.mkv", len(pts), pts_of=pts)
    source = probe_video(src)
    # From the first frame's start to the last frame's end (it lasts as long as the step
    # before it, to the container's millisecond), not frames x mean step (11 ms more for
    # 24-30-50).
    end = (pts[-1] - pts[0] + pts[-1] - pts[-2]) / 1000
    assert source.info.duration_s == pytest.approx(end, abs=0.0015)
    plan, out, _ = normalize_file(src, tmp_path / "out.mp4")
    assert "variable frame rate" in plan.reasons
    assert out.constant_frame_rate and out.frame_rate == 30
    assert out.info.frame_count == round(source.info.duration_s * 30) == plan.frame_count
    shown = read_indices(tmp_path / "out.mp4")
    assert shown == nearest_frames(pts, 30, len(shown))


def _write_full_range_video(path: Path, levels: list[int]) -> Path:
    """A lossless yuvj420p (full range) H.264 video of flat frames with these luma levels."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        stream.options = {"crf": "0"}
        for level in levels:
            planes = np.concatenate([np.full(64 * 48, level), np.full(64 * 24, 128)])
            frame = av.VideoFrame.from_ndarray(
                planes.astype(np.uint8).reshape(72, 64), format="yuvj420p"
            )
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_full_range_source_becomes_tv_range_with_the_same_picture(tmp_path):
    levels = [0, 16, 64, 128, 235, 255]
    src = _write_full_range_video(tmp_path / "full.mp4", levels)
    assert probe_video(src).full_range
    plan, out, _ = normalize_file(src, tmp_path / "out.mp4")
    assert plan.reasons == ("pixel format yuvj420p is not yuv420p",)
    assert out.info.pix_fmt == "yuv420p" and not out.full_range
    with av.open(str(tmp_path / "out.mp4")) as container:
        frames = list(container.decode(video=0))
    luma = [int(np.median(f.to_ndarray(format="yuv420p")[:48])) for f in frames]
    rgb = [int(np.median(f.to_ndarray(format="rgb24"))) for f in frames]
    # tv range: 0..255 maps to 16..235; the decoded picture keeps its levels.
    assert np.abs(np.array(luma) - (16 + 219 * np.array(levels) / 255)).max() <= 1
    assert np.abs(np.array(rgb) - levels).max() <= 2
    # The normalized video complies: a second ingest copies it.
    again, _, _ = normalize_file(tmp_path / "out.mp4", tmp_path / "again.mp4")
    assert not again.reencode


def test_a_pc_range_tag_on_yuv420p_is_a_reason_to_reencode(tmp_path):
    src = tmp_path / "tagged.webm"  # VP9 has no yuvj formats: the range is a tag
    with av.open(str(src), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.color_range = 2  # pc
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 200, np.uint8), "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    probe = probe_video(src)
    assert probe.info.pix_fmt == "yuv420p" and probe.full_range
    assert plan_normalization(probe, None, 1080).reasons == (
        "codec vp9 is not h264",
        "full (pc) colour range",
    )


def test_the_codec_is_named_not_its_decoder(tmp_path):
    probe = probe_video(write_indexed_video(tmp_path / "av1.mkv", 5, codec="libsvtav1"))
    assert probe.info.codec == "av1"  # decoded by libdav1d
    plan = plan_normalization(probe, None, 1080)
    assert plan.reasons == ("codec av1 is not h264",)


def test_tall_and_non_h264_sources_are_reencoded(tmp_path):
    src = write_indexed_video(tmp_path / "mpeg4.mkv", 20, codec="mpeg4")
    plan, out, _ = normalize_file(src, tmp_path / "out.mp4", max_height=48)
    assert plan.reasons == ("codec mpeg4 is not h264", "height 96 above max_height 48")
    assert (out.info.codec, out.info.pix_fmt, out.info.width, out.info.height) == (
        "h264",
        "yuv420p",
        80,
        48,
    )
    assert out.info.frame_count == 20


def test_corrupt_stream_fails_the_reencode(indexed, tmp_path):
    data = bytearray(indexed.read_bytes())
    rng = random.Random(0)
    for _ in range(300):
        at = rng.randrange(len(data) // 4, len(data) // 2)  # inside the frame data
        data[at : at + 32] = rng.randbytes(32)
    garbled = tmp_path / "garbled.mp4"
    garbled.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match="corrupt"):
        normalize_file(garbled, tmp_path / "out.mp4", "00:00-00:04")


# --- the stage run -------------------------------------------------------------------------------


def test_ingest_publishes_and_then_hits_the_cache(indexed, local_store):
    first = run_ingest(local_store, make_request(str(indexed), "00:01-00:02", 0, False))
    again = run_ingest(local_store, make_request(str(indexed), "0:00:01.000-0:00:02", 0, False))
    assert not first.stage.cache_hit and again.stage.cache_hit
    assert again.stage.outputs == first.stage.outputs
    assert again.probe == first.probe and first.probe.frame_count == 30
    assert first.reencoded and again.reencoded
    assert first.source_probe.frame_count == 150
    stored = local_store.local_path(first.stage.outputs["video"].key)
    assert read_indices(stored) == list(range(30, 60))


def test_probe_output_records_the_applied_rotation(tmp_path, local_store):
    src = write_indexed_video(tmp_path / "rot.mp4", 30, rotation=270)
    result = run_ingest(local_store, make_request(str(src), "", 0, False))
    assert (result.probe.width, result.probe.height, result.probe.rotation_deg) == (_H, _W, 270)
    assert result.reencoded and result.source_probe.rotation_deg == 270
    stored = local_store.local_path(result.stage.outputs["video"].key)
    assert read_indices(stored, quarter_turns=1) == list(range(30))


def test_store_source_is_an_input_of_the_cache_key(indexed, store):
    key = "uploads/indexed.mp4"
    store.put_file(key, indexed, "video/mp4")
    result = run_ingest(store, make_request(store.uri(key), "", 0, False))
    assert not result.reencoded and result.probe.frame_count == 150
    manifest = store.get_bytes(result.stage.manifest.key).decode()
    assert store.uri(key) in manifest


@pytest.mark.parametrize(("given", "used"), [(0, 1080), (720, 720)])
def test_max_height_defaults_to_1080(given, used):
    assert make_request("x.mp4", "", given, False).max_height == used


def test_tiny_max_height_is_invalid():
    with pytest.raises(InvalidInput, match="max_height 8"):
        make_request("x.mp4", "", 8, False)
