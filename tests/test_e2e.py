"""End to end, the real thing: stage services as processes over gRPC, moto's S3 server as the
store, the real Prefect engine and server, small generated test models, a generated video with
moving figures.

One Prefect test harness (a real Prefect server process) serves the whole module; the flow
runs in this process for the engine tests and in a process worker for the deployment tests.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from prefect.exceptions import ParameterTypeError
from prefect.testing.utilities import prefect_test_harness

from orchestrator import progress
from orchestrator.flow import process_video, process_videos
from orchestrator.params import ParameterError, VideoParams
from orchestrator.stack import LocalStack
from orchestrator.testmodels import install_test_models
from services.common.formats.fits import load_fits
from services.common.formats.masks import read_track_masks
from services.common.formats.predictions import PredictionsReader
from services.common.store import S3Store
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, s3_env
from tests.support.world import make_moving_camera_video

pytestmark = pytest.mark.slow

STAGES = ["ingest", "tracking", "semseg", "slam", "pose", "fitting", "interpolation", "render"]
#: Stage outcomes of a moving-camera run, in order (slam-scale: the people-anchored scale pass).
RUN_STAGES = ["ingest", "tracking", "semseg", "slam", "pose", "slam-scale", "fitting",
              "interpolation", "render"]
FRAMES, FIGURES = 60, 2
TRUE_FOV = 55.0


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=180):
        from prefect.settings import PREFECT_API_URL

        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def e2e(s3_endpoint, prefect_server, tmp_path_factory):
    """The services as processes on a fresh bucket, and the environment the flow needs."""
    root = tmp_path_factory.mktemp("e2e")
    bucket = f"e2e-{os.getpid()}"
    env = {
        **s3_env(s3_endpoint, bucket),
        **install_test_models(root / "models"),
        "NLFPIPE_SERVING_WAIT_S": "60",
    }
    store = S3Store(s3_endpoint, ACCESS_KEY, SECRET_KEY, bucket)
    store.ensure_bucket()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with LocalStack(STAGES, env={**os.environ}, state_dir=root / "state") as stack:
            for name, value in stack.address_env().items():
                patch.setenv(name, value)
            video = root / "walkers.mp4"
            truth = make_moving_camera_video(video, seconds=2.0, width=480, height=270, fps=30,
                                             figures=FIGURES, motion="forward",
                                             fov_deg=TRUE_FOV)  # fmt: skip
            yield {"stack": stack, "store": store, "video": video, "root": root, "env": env,
                   "truth": truth}  # fmt: skip


@pytest.fixture(scope="module")
def first_and_second_run(e2e):
    params = VideoParams(video=str(e2e["video"]))
    first = process_video(params)
    second = process_video(params)
    return first, second


def _by_stage(summary):
    return {s.stage: s for s in summary.stages}


def _manifest(store, outcome) -> dict:
    return json.loads(store.get_bytes(store.key_from_uri(outcome.manifest_uri)))


def test_run_finds_the_people_and_every_output_is_consistent(e2e, first_and_second_run):
    store = e2e["store"]
    first, _ = first_and_second_run
    stages = _by_stage(first)
    assert list(stages) == RUN_STAGES
    assert not any(s.cache_hit for s in first.stages)
    assert first.frames == FRAMES
    assert first.people_found == FIGURES

    for outcome in first.stages:
        manifest = _manifest(store, outcome)
        assert manifest["stage"] == {"slam-scale": "slam"}.get(outcome.stage, outcome.stage)
        assert manifest["cache_key"] == outcome.cache_key
        for name, ref in outcome.outputs.items():
            if name in manifest["outputs"]:
                assert manifest["outputs"][name]["sha256"] == ref.sha256
                assert store.stat(store.key_from_uri(ref.uri)).size_bytes == ref.size_bytes

    # Each stage read exactly what the one before it produced.
    video_uri = stages["ingest"].outputs["video"].uri
    masks_uri = stages["tracking"].outputs["masks"].uri
    predictions_uri = stages["pose"].outputs["predictions"].uri
    tracking_inputs = {i["uri"] for i in _manifest(store, stages["tracking"])["inputs"].values()}
    pose_inputs = {i["uri"] for i in _manifest(store, stages["pose"])["inputs"].values()}
    fitting_inputs = {i["uri"] for i in _manifest(store, stages["fitting"])["inputs"].values()}
    assert video_uri in tracking_inputs
    assert {video_uri, masks_uri} <= pose_inputs
    assert predictions_uri in fitting_inputs

    tracks = stages["tracking"].values["tracks"]
    assert [t["track_id"] for t in tracks] == list(range(FIGURES))
    assert all(t["frames_present"] >= FRAMES - 2 for t in tracks)
    masks = read_track_masks(store.get_file(store.key_from_uri(masks_uri), e2e["root"] / "m"))
    assert masks.num_frames == FRAMES
    assert sorted(masks.track_ids) == list(range(FIGURES))

    predictions = e2e["root"] / "predictions"
    store.get_file(store.key_from_uri(predictions_uri), predictions)
    frames = list(PredictionsReader(predictions))
    assert len(frames) == FRAMES
    assert all(f.track_ids.tolist() == list(range(FIGURES)) for f in frames)
    assert stages["pose"].counts["person_frames"] == FRAMES * FIGURES

    fitting = stages["fitting"]
    assert fitting.outputs, "fitting must publish its fits"
    assert int(fitting.counts.get("tracks", FIGURES)) == FIGURES

    summary = json.loads(store.get_bytes(store.key_from_uri(first.summary_uri)))
    assert summary["people_found"] == FIGURES
    assert set(summary["outputs"]) >= {"ingest.video", "tracking.masks", "pose.predictions"}


def _world_and_people(e2e, run) -> dict:
    """How a moving-camera run's world and people compare with the truth of the walk.

    The truth of the people: the pose stand-in (services/pose/test_model.py) places the body
    template of `--test-models` (orchestrator/testmodels.py) on the camera ray through each box
    centre at depth f * 1.7 m / box height, so the meaningful truth is what it yields for the
    figures' true boxes seen through the true cameras (the rendered figures are 1.7 m tall
    billboards, so this is also their true place). Returns the slam outcomes, the world's
    scale against the truth, the camera path's error, and per person the median distance
    (mm) to the truth after the camera alignment alone, and after one similarity of the people.
    """
    from evo.core import geometry
    from smplfitter.pt import BodyModel

    from services.common.formats.cameras import CameraTrack
    from services.slam.geometry import similarity_between
    from tests.support.fake_nlf import BODY_HEIGHT_MM

    store, truth = e2e["store"], e2e["truth"]
    stages = _by_stage(run)
    scaled = stages["slam-scale"]
    cameras = CameraTrack.load(
        store.get_file(store.key_from_uri(scaled.outputs["cameras"].uri), e2e["root"] / "c.npz")
    )
    true = truth.cameras
    s, q, t = similarity_between(true.rotation, true.optical_center, cameras.rotation,
                                 cameras.optical_center)  # fmt: skip

    models = Path(e2e["env"]["NLFPIPE_MODEL_CACHE"])
    template = np.load(models / "nlf-data" / "canonical_verts" / "smpl.npy").mean(0) * 1000
    k = true.intrinsics[0]
    expected = []
    for boxes in truth.boxes:  # per figure: stand-in centre through the true cameras (mm)
        depth = k[1, 1] * BODY_HEIGHT_MM / boxes[:, 3]
        cx, cy = boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2
        cam = np.stack([(cx - k[0, 2]) / k[0, 0] * depth, (cy - k[1, 2]) / k[1, 1] * depth,
                        depth], 1) + template  # fmt: skip
        expected.append(np.einsum("tji,tj->ti", true.rotation, cam) + true.optical_center)
    fits_path = store.get_file(store.key_from_uri(stages["fitting"].outputs["fits"].uri),
                               e2e["root"] / "fits.npz")  # fmt: skip
    meta, tracks = load_fits(fits_path)
    step = int(meta["fps_factor"])
    body = BodyModel("smpl", "neutral", model_root=str(Path(e2e["env"]["SMPLFITTER_BODY_MODELS"])
                                                          / "smpl"))  # fmt: skip
    fitted, truths = [], []
    for fit in tracks.values():
        frames = np.arange(0, len(fit.valid), step)
        frames = frames[fit.valid[frames]]
        out = body(torch.as_tensor(fit.pose_rotvecs[frames]),
                   torch.as_tensor(fit.betas_per_frame()[frames]),
                   torch.as_tensor(fit.trans[frames]))  # fmt: skip
        centre = s * (out["vertices"].numpy().mean(1) * 1000) @ q.T + t  # in the true world, mm
        nearest = min(expected, key=lambda e: np.median(np.linalg.norm(centre - e[frames // step],
                                                                       axis=1)))  # fmt: skip
        fitted.append(centre)
        truths.append(nearest[frames // step])
    camera_error = np.linalg.norm(s * cameras.optical_center @ q.T + t - true.optical_center,
                                  axis=1)  # fmt: skip
    fitted_all, truth_all = np.concatenate(fitted), np.concatenate(truths)
    rotation, translation, scale = geometry.umeyama_alignment(fitted_all.T, truth_all.T, True)
    after_similarity = np.linalg.norm(scale * fitted_all @ rotation.T + translation - truth_all,
                                      axis=1)  # fmt: skip
    result = {
        "slam": stages["slam"], "scaled": scaled, "world_scale": s,
        "report": json.loads(store.get_bytes(store.key_from_uri(scaled.outputs["report"].uri))),
        "camera_rmse_mm": float(np.sqrt((camera_error**2).mean())),
        "path_mm": float(np.linalg.norm(np.diff(true.optical_center, axis=0), axis=1).sum()),
        "people": len(fitted),
        "people_mm": [np.linalg.norm(f - g, axis=1) for f, g in zip(fitted, truths, strict=True)],
        "people_after_similarity_mm": after_similarity,
    }
    print("world scale", round(s, 4), "; fov", round(stages["slam"].values["fov_deg"], 2),
          "; people: median error after the camera alignment",
          [round(float(np.median(e))) for e in result["people_mm"]],
          "mm; after the people's similarity", round(float(np.median(after_similarity))),
          "mm, scale", round(scale, 4))  # fmt: skip
    return result


def _assert_metric_world(found: dict) -> None:
    slam, scaled = found["slam"], found["scaled"]
    assert slam.values["needs_people_scale"] and not slam.values.get("static_camera_detected")
    assert scaled.values["scale_source"] == "people"
    report = found["report"]
    assert report["backend"] == "colmap" and report["scale"]["people"]["observable"]
    s = found["world_scale"]
    assert abs(s - 1) <= 0.05, f"the world is not metric: {s:.3f} true mm per estimated mm"
    assert found["camera_rmse_mm"] <= 0.01 * found["path_mm"]
    assert found["people"] == FIGURES


def test_moving_camera_gives_metric_world_fits_on_the_true_people_paths(e2e, first_and_second_run):
    """The default run (FOV estimated): the colmap backend runs for real on the rendered walk,
    the people-anchored scale makes the world metric, and the people's paths have the true
    shape. After the camera alignment alone they are off along the camera rays in proportion
    to the focal length's error (the stand-in, like NLF, puts people at a depth proportional
    to it): 1 degree of FOV is about 2% of their 4-5 m depth, so the 10 cm check is made with
    the FOV given (the next test); tests/test_slam_colmap.py checks the estimate (2 degrees)."""
    first, _ = first_and_second_run
    found = _world_and_people(e2e, first)
    _assert_metric_world(found)
    fov_error = abs(found["slam"].values["fov_deg"] - TRUE_FOV)
    assert fov_error <= 3.0
    errors = found["people_after_similarity_mm"]
    assert np.median(errors) <= 100 and np.percentile(errors, 90) <= 150
    for error in found["people_mm"]:  # 100 mm, plus 2.5% of 5 m per degree of FOV error
        assert np.median(error) <= 100 + 125 * fov_error


def test_moving_camera_with_its_fov_puts_the_people_within_10_cm(e2e, first_and_second_run):
    """The walk with its FOV given (`--fov`): the fitted people follow the truth within 10 cm
    in the world after the camera alignment alone."""
    run = process_video(VideoParams(video=str(e2e["video"]), fov_deg=TRUE_FOV))
    found = _world_and_people(e2e, run)
    _assert_metric_world(found)
    assert found["report"]["intrinsics"]["source"] == "given"
    for error in found["people_mm"]:
        assert np.median(error) <= 100 and np.percentile(error, 90) <= 150


def test_second_identical_run_is_all_cache_hits_and_fast(first_and_second_run):
    first, second = first_and_second_run
    assert all(s.cache_hit for s in second.stages)
    assert all(s.compute_seconds == 0 for s in second.stages)
    assert [s.cache_key for s in second.stages] == [s.cache_key for s in first.stages]
    assert second.stage_wall_seconds <= 0.2 * first.stage_wall_seconds, (
        second.stage_wall_seconds, first.stage_wall_seconds
    )


def test_doubled_frame_rate_gives_a_video_and_fits_of_2t_frames_in_step(e2e, first_and_second_run):
    import av

    store, root = e2e["store"], e2e["root"]
    first, _ = first_and_second_run
    stages = _by_stage(first)
    assert first.fps_factor == 2  # 30 fps: doubled by default
    interpolation = stages["interpolation"]
    ingested = stages["ingest"].outputs["video"].uri
    assert [i["uri"] for i in _manifest(store, interpolation)["inputs"].values()] == [ingested]
    assert interpolation.values["frame_count"] == 2 * FRAMES
    assert interpolation.values["backend"].startswith("flow-")  # --test-models: no weights
    doubled = store.get_file(store.key_from_uri(interpolation.outputs["video"].uri),
                             root / "doubled.mp4")  # fmt: skip
    source = store.get_file(store.key_from_uri(ingested), root / "ingested.mp4")
    with av.open(str(doubled)) as container:
        stream = container.streams.video[0]
        assert (stream.average_rate, stream.codec_context.pix_fmt) == (60, "yuv420p")
        frames = [f.to_ndarray(format="gray").astype(float) for f in container.decode(stream)]
    with av.open(str(source)) as container:
        originals = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    assert len(frames) == 2 * len(originals) == 2 * FRAMES
    assert max(abs(frames[2 * i] - originals[i]).mean() for i in range(FRAMES)) < 2.0

    fits_ref = stages["fitting"].outputs["fits"]
    meta, tracks = load_fits(store.get_file(store.key_from_uri(fits_ref.uri), root / "fits.npz"))
    assert meta["num_frames"] == 2 * FRAMES and meta["fps"] == 60
    assert all(len(t.valid) == len(t.trans) == 2 * FRAMES for t in tracks.values())
    assert first.outputs()["interpolation.video"] == interpolation.outputs["video"].uri


def test_render_outputs_reach_the_results_folder_and_the_ui(e2e, first_and_second_run, tmp_path):
    import urllib.request

    import av

    from orchestrator.results import export_results
    from orchestrator.stage_tasks import RENDER_PREVIEWS

    first, _ = first_and_second_run
    render = _by_stage(first)["render"]
    video = _manifest(e2e["store"], render)["inputs"]["video"]["uri"]
    assert video == _by_stage(first)["interpolation"].outputs["video"].uri
    folder = export_results(first, tmp_path / "results")
    names = {p.name for p in folder.iterdir()}
    videos = {"render-camera_view_video.mp4", "render-world_view_video.mp4"}
    previews = {f"render-{name}{'.gif' if name.endswith('clip') else '.png'}"
                for name in RENDER_PREVIEWS}  # fmt: skip
    assert videos | previews <= names, sorted(names)
    exported = {n for n in names if n.startswith("render-exports_")}
    assert {"render-exports_scene.glb", "render-exports_world.npz"} <= exported, sorted(names)
    bvh = {n.removesuffix(".bvh").split("_")[2] for n in exported if n.endswith(".bvh")}
    assert bvh == {str(t) for t in range(FIGURES)}, sorted(exported)
    for name in videos:
        with av.open(str(folder / name)) as container:
            assert sum(1 for _ in container.decode(video=0)) == FRAMES * first.fps_factor

    images = [a for a in _artifacts_of_type("image") if a.description in RENDER_PREVIEWS.values()]
    keys = {e2e["store"].key_from_uri(render.outputs[n].uri) for n in RENDER_PREVIEWS}
    shown = {k for k in keys for a in images if k in a.data}
    assert shown == keys, "every render preview is an image artifact of the run"
    top_view = next(a.data for a in images if "top_view" in a.data)
    with urllib.request.urlopen(top_view, timeout=10) as response:
        assert response.read(8) == b"\x89PNG\r\n\x1a\n"


def _artifacts_of_type(kind: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    with get_client(sync_client=True) as client:
        kind_filter = ArtifactFilter(type=ArtifactFilterType(any_=[kind]))
        return client.read_artifacts(artifact_filter=kind_filter)


def test_killing_a_service_mid_stage_retries_and_completes(e2e, first_and_second_run):
    stack = e2e["stack"]
    killed = []

    def kill_tracking_once(event):
        if event.stage == "tracking" and event.done > 0 and not killed:
            service = stack.services["tracking"]
            os.kill(service.pid, signal.SIGKILL)
            killed.append(service.pid)

    progress.add_listener(kill_tracking_once)
    try:
        summary = process_video(VideoParams(video=str(e2e["video"]), force=True))
    finally:
        progress.remove_listener(kill_tracking_once)
    assert killed, "the tracking service was never killed"
    stages = _by_stage(summary)
    assert stages["tracking"].attempts >= 2
    assert stack.services["tracking"].restarts >= 1
    assert summary.people_found == FIGURES
    first, _ = first_and_second_run
    assert stages["tracking"].cache_key == _by_stage(first)["tracking"].cache_key


@pytest.mark.parametrize(
    ("change", "field"),
    [({"max_persons": 0}, "max_persons"), ({"slam_backend": "orbslam"}, "slam_backend")],
)
def test_bad_parameter_fails_fast_naming_the_field(e2e, change, field):
    before = len(e2e["store"].list("stages/"))
    started = time.monotonic()
    with pytest.raises((ParameterError, ParameterTypeError)) as info:
        process_video({"video": str(e2e["video"]), **change})
    assert field in str(info.value)
    assert time.monotonic() - started < 10
    assert len(e2e["store"].list("stages/")) == before, "no stage may run"


def test_many_videos_share_each_gpu_service_one_call_at_a_time(e2e, first_and_second_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterTags

    folder = e2e["root"] / "batch"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copyfile(e2e["video"], folder / name)
    summaries = process_videos(folder=str(folder), max_concurrent_videos=2)
    assert sorted(Path(s.video).name for s in summaries) == ["a.mp4", "b.mp4"]
    assert all(s.people_found == FIGURES for s in summaries)
    with get_client(sync_client=True) as client:
        limit = client.read_concurrency_limit_by_tag("nlfpipe-gpu-pose")
        assert limit.concurrency_limit == 1
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=["nlfpipe-gpu-pose"]))
        )
    spans = sorted((r.start_time, r.end_time) for r in runs if r.start_time and r.end_time)
    assert len(spans) >= 2
    overlaps = [(a, b) for a, b in zip(spans, spans[1:], strict=False) if a[1] > b[0]]
    assert not overlaps, f"pose calls overlapped: {overlaps}"


# -- deployment through a real Prefect server, triggered through the API as the UI does -------


@pytest.fixture(scope="module")
def worker(e2e, prefect_server):
    """prefect.yaml's local deployment, deployed with `prefect deploy`, and a process worker."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    repo = Path(__file__).resolve().parents[1]
    prefect = str(Path(sys.executable).with_name("prefect"))
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PYTHONPATH": str(repo)}  # fmt: skip
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="nlfpipe-local", type="process"))
    deployed = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--prefect-file", "prefect.yaml",
         "--name", "process-video-local"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    log = open(e2e["root"] / "worker.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [prefect, "worker", "start", "--pool", "nlfpipe-local"],
        cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    yield {key: value for key, value in env.items() if key.startswith(_JOB_ENV)}
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc.send_signal(sig)
        try:
            proc.wait(10)
            break
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.kill()
    log.close()


_JOB_ENV = ("NLFPIPE_", "SMPLFITTER_", *(f"{s.upper()}_ADDR" for s in STAGES))


def _artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def _summary_artifact(flow_run_id) -> str:
    artifacts = _artifacts(flow_run_id)
    return next(a.data for a in artifacts if a.type == "markdown" and "People found" in a.data)


def test_deployment_runs_with_parameters_from_the_api(e2e, worker, first_and_second_run):
    from prefect.deployments import run_deployment

    run = run_deployment(
        "process-video/process-video-local",
        # fps_factor 1 changes only the fitting parameters: earlier stages are cache hits (no
        # progress artifact), fitting and render compute and report their progress.
        parameters={"params": {"video": str(e2e["video"]), "nlf": {"num_aug": 5}, "fps_factor": 1}},
        job_variables={"env": worker},
        timeout=300,
    )
    assert run.state.is_completed(), run.state.message
    summary = _summary_artifact(run.id)
    assert f"**People found:** {FIGURES}" in summary
    assert "| pose | cache hit |" in summary
    progress = [a for a in _artifacts(run.id) if a.type == "progress"]
    assert len(progress) == 2 and all(p.data == 100.0 for p in progress)


def test_subject_selection_pauses_for_input_and_resumes(e2e, worker):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.flow_runs import resume_flow_run

    run = run_deployment(
        "process-video/process-video-local",
        parameters={"params": {"video": str(e2e["video"]), "subjects": {"in_ui": True}}},
        job_variables={"env": worker},
        timeout=0,
    )
    deadline = time.monotonic() + 240
    with get_client(sync_client=True) as client:
        while not (state := client.read_flow_run(run.id).state).is_paused():
            assert not state.is_final(), state.message
            assert time.monotonic() < deadline, "the run never paused for subject selection"
            time.sleep(1)
        kinds = {a.type for a in _artifacts(run.id)}
        assert "image" in kinds, kinds
        keyset = state.state_details.run_input_keyset
        dialog = client.read_flow_run_input(run.id, keyset["description"])
        assert "![Candidates on the init frame](http" in dialog and "| number | score |" in dialog
        resume_flow_run(run.id, run_input={"indices": [1]})
        while not (state := client.read_flow_run(run.id).state).is_final():
            assert time.monotonic() < deadline, "the run did not finish after resuming"
            time.sleep(1)
    assert state.is_completed(), state.message
    assert "**People found:** 1" in _summary_artifact(run.id)
