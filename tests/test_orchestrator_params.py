"""The run parameters: parsing, validation that names the field, refusal of unbuilt stages."""

import pytest

from orchestrator.params import (
    ParameterError,
    VideoKind,
    VideoParams,
    classify_video,
    parse_time,
    parse_time_range,
    required_stages,
    validate_params,
)


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"not really a video")
    return str(path)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("01:05.5", 65.5), ("1:00:00", 3600.0), ("12", 12.0), ("00:00.25", 0.25), ("2.5", 2.5)],
)
def test_parse_time_accepts_reference_formats(text, seconds):
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1:2:3:4", "ab:cd", "01:75", "-3"])
def test_parse_time_rejects_malformed(text):
    with pytest.raises(ValueError):
        parse_time(text)


def test_parse_time_range():
    assert parse_time_range("00:45-01:25") == (45.0, 85.0)
    with pytest.raises(ValueError, match="end must come after"):
        parse_time_range("01:25-00:45")


def test_classify_video(tmp_path, video):
    assert classify_video("s3://bucket/videos/a.mp4") is VideoKind.STORE
    assert classify_video("file:///data/store/a.mp4") is VideoKind.STORE
    assert classify_video("https://example.org/a.mp4") is VideoKind.URL
    assert classify_video("dQw4w9WgXcQ") is VideoKind.YOUTUBE
    assert classify_video(video) is VideoKind.PATH
    named_like_id = tmp_path / "abcdefghijk"
    named_like_id.write_bytes(b"x")
    assert classify_video(str(named_like_id)) is VideoKind.PATH


def test_defaults_mirror_the_reference(video):
    params = validate_params({"video": video})
    assert params.max_persons == -1
    assert params.static_camera is False
    assert (params.slam_backend, params.scale_source) == ("auto", "auto")
    assert params.renderer == "opengl"
    assert params.fps_factor == 0 and params.fov_deg == 0.0 and params.time_range == ""
    assert (params.nlf.num_aug, params.nlf.antialias_factor) == (5, 2)
    assert (params.nlf.batch_size, params.nlf.internal_batch_size) == (8, 8)
    assert params.subjects.is_all
    assert required_stages(params) == [
        "ingest", "tracking", "semseg", "slam", "pose", "fitting", "interpolation", "render"
    ]
    static = validate_params(
        {"video": video, "static_camera": True, "fps_factor": 1, "renderer": "none"}
    )
    assert required_stages(static) == ["ingest", "tracking", "pose", "fitting"]
    assert "interpolation" not in required_stages(params.model_copy(update={"fps_factor": 1}))


def test_init_time_is_relative_to_the_cut(video):
    params = validate_params(
        {"video": video, "time_range": "00:10-00:20", "seg_init_time": "00:12.5"}
    )
    assert params.time_window == (10.0, 20.0)
    assert params.init_time_in_clip() == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"max_persons": 0}, "max_persons", "-1 (no limit) or at least 1"),
        ({"time_range": "00:20-00:10"}, "time_range", "end must come after"),
        ({"time_range": "10"}, "time_range", "START-END"),
        ({"seg_init_time": "noon"}, "seg_init_time", "not a time"),
        ({"fov_deg": 200}, "fov_deg", "less than 179"),
        ({"fps_factor": 3}, "fps_factor", "1 or 2"),
        ({"nlf": {"num_aug": 0}}, "nlf.num_aug", "greater than or equal to 1"),
        ({"nlf": {"batchsize": 4}}, "nlf.batchsize", "Extra inputs"),
        ({"subjects": {"indices": [0, 0]}}, "subjects.indices", "distinct"),
        ({"subjects": {"indices": [0], "in_ui": True}}, "subjects", "one way only"),
        ({"renderer": "mayavi"}, "renderer", "'none'"),
        ({"video": "  "}, "video", "give a path"),
        ({"video": "/no/such/video.mp4"}, "video", "no such file"),
        ({"slam_backend": "orbslam"}, "slam_backend", "'colmap'"),
        ({"scale_source": "guess"}, "scale_source", "'people'"),
        ({"renderer": "poseviz"}, "renderer", "'opengl'"),
        ({"max_persons": 1, "subjects": {"indices": [0, 1]}}, "max_persons", "selects 2 people"),
    ],
)
def test_invalid_parameters_name_the_field(video, change, field, words):
    raw = {"video": video, **change}
    with pytest.raises(ParameterError) as info:
        validate_params(raw)
    message = str(info.value)
    if field == "max_persons" and "selects" in words:
        assert "subjects.indices" in message
    else:
        assert info.value.field == field
        assert message.startswith(f"{field}:")
    assert words in message


def test_init_time_outside_range_is_refused(video):
    with pytest.raises(ParameterError, match="outside time_range"):
        validate_params({"video": video, "time_range": "00:10-00:20", "seg_init_time": "00:25"})


def test_model_round_trips_through_json(video):
    params = validate_params(
        {"video": video, "subjects": {"points": [{"x": 10, "y": 20.5}]}, "fov_deg": 60}
    )
    again = VideoParams.model_validate_json(params.model_dump_json())
    assert again == params
    assert again.subjects.points[0].y == 20.5
