"""The render stage in the flow: the renderer option, the stages a run needs, and how render's
results (exports by file name) become outputs and result files."""

import argparse

import pytest

from nlfpipe.common.v1 import common_pb2
from nlfpipe.render.v1 import render_pb2
from orchestrator import cli
from orchestrator.outcome import outcome_from_result
from orchestrator.params import required_stages, validate_params
from orchestrator.results import result_file_name


@pytest.fixture
def video(tmp_path) -> str:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"x")
    return str(path)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    return parser.parse_args(["run", *argv])


def test_rendering_is_on_by_default_and_none_turns_it_off(video):
    default = validate_params(cli.params_from_args(_parse([video])))
    assert default.renderer == "opengl" and required_stages(default)[-1] == "render"
    off = validate_params(cli.params_from_args(_parse([video, "--renderer", "none"])))
    assert "render" not in required_stages(off)
    with pytest.raises(SystemExit):
        _parse([video, "--renderer", "blendipose"])


def test_the_render_follows_fitting_and_the_doubled_video_when_the_rate_doubles(video):
    auto = validate_params({"video": video})
    assert required_stages(auto)[-3:] == ["fitting", "interpolation", "render"]
    single = validate_params({"video": video, "fps_factor": 1})
    assert required_stages(single)[-2:] == ["fitting", "render"]


def test_exports_become_outputs_named_by_file_and_keep_their_names_as_results():
    ref = common_pb2.ArtifactRef(
        uri="s3://b/stages/render/k/exports_scene.glb", media_type="model/gltf-binary"
    )
    bvh = common_pb2.ArtifactRef(uri="s3://b/x/exports_track_2.bvh", media_type="application/x-bvh")
    clip = common_pb2.ArtifactRef(uri="s3://b/x/camera_view_clip", media_type="image/gif")
    result = render_pb2.RunResult(
        camera_view_clip=clip,
        exports={"scene.glb": ref, "track_2.bvh": bvh},
        width=64,
        frame_count=10,
    )
    outcome = outcome_from_result("render", result, wall_seconds=1.0)
    assert set(outcome.outputs) == {"camera_view_clip", "exports_scene.glb", "exports_track_2.bvh"}
    assert outcome.values["width"] == 64 and outcome.values["frame_count"] == 10
    names = {
        result_file_name("render", name, r.media_type) for name, r in outcome.outputs.items()
    }
    assert names == {
        "render-camera_view_clip.gif",
        "render-exports_scene.glb",
        "render-exports_track_2.bvh",
    }
