"""The local stack: services as processes, reuse, restart after a crash, clean stop; the CLI."""

import argparse
import hashlib
import json
import os
import signal
import time

import psutil
import pytest

from orchestrator import cli
from orchestrator.messages import in_cli_terms
from orchestrator.params import ParameterError, validate_params
from orchestrator.results import result_file_name
from orchestrator.stack import (
    LocalStack,
    ModelsMissing,
    StackMismatch,
    _model_not_ready_reason,
    models_difference,
    running_services,
    service_models,
    stack_status,
    stop_recorded,
)
from services.common.client import health_status


@pytest.fixture
def local_env(tmp_path, monkeypatch):
    monkeypatch.setenv("NLFPIPE_STORE", "local")
    monkeypatch.setenv("NLFPIPE_STORE_ROOT", str(tmp_path / "store"))
    return tmp_path


def _wait_for(predicate, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_stack_restarts_a_killed_service_on_its_port_and_stops_cleanly(local_env):
    with LocalStack(["ingest"], state_dir=local_env / "state") as stack:
        service = stack.services["ingest"]
        assert health_status(service.address) == "SERVING"
        os.kill(service.pid, signal.SIGKILL)
        assert _wait_for(lambda: stack.services["ingest"].restarts == 1)
        assert _wait_for(lambda: health_status(service.address) == "SERVING")
        assert stack.services["ingest"].address == service.address
        restarted = stack.services["ingest"].popen
    assert restarted.poll() == 0, "SIGTERM must stop the service with exit code 0"
    assert health_status(service.address, timeout_s=1.0) == "UNREACHABLE"


def test_several_services_come_from_one_fork_server_and_stop_cleanly(local_env):
    from orchestrator.forked import ForkedService

    state_dir = local_env / "state"
    with LocalStack(["ingest", "interpolation"], state_dir=state_dir) as stack:
        forkserver = stack._forkserver
        forked = dict(stack.services)
        for service in forked.values():
            assert isinstance(service.popen, ForkedService)
            assert health_status(service.address) == "SERVING"
            process = psutil.Process(service.pid)
            assert process.ppid() == forkserver.pid
            assert os.getsid(service.pid) == service.pid, "a session of its own, as before"
            assert "services.common.forkserver" in " ".join(process.cmdline())
        ingest = forked["ingest"]
        os.kill(ingest.pid, signal.SIGKILL)
        assert _wait_for(lambda: stack.services["ingest"].restarts == 1)
        assert _wait_for(lambda: health_status(ingest.address) == "SERVING")
        assert ingest.popen.poll() == -signal.SIGKILL, "the fork server recorded how it ended"
        assert not isinstance(stack.services["ingest"].popen, ForkedService), "restarted alone"
    assert forked["interpolation"].popen.poll() == 0, "SIGTERM stops a forked service with 0"
    assert forkserver.poll() == 0
    assert all(health_status(s.address, timeout_s=1.0) == "UNREACHABLE" for s in forked.values())
    assert not list(state_dir.glob("forked-*")) and not list(state_dir.glob("*.port"))
    assert "listening" in (state_dir / "logs" / "interpolation.log").read_text()


def test_forking_services_can_be_turned_off(local_env):
    env = {**os.environ, "NLFPIPE_FORK_SERVICES": "0"}
    with LocalStack(["ingest", "interpolation"], env=env, state_dir=local_env / "s") as stack:
        assert stack._forkserver is None
        assert all("serve" in s.popen.args for s in stack.services.values())


def test_the_fork_server_spawns_plain_services_while_a_thread_runs(tmp_path, monkeypatch):
    """Forking a process in which another thread runs could leave a lock held in the child."""
    import threading

    from services.common.forkserver import start_children

    monkeypatch.setenv("NLFPIPE_STORE", "local")
    monkeypatch.setenv("NLFPIPE_STORE_ROOT", str(tmp_path / "store"))
    running = threading.Event()
    thread = threading.Thread(target=running.wait, daemon=True)
    thread.start()
    children: dict[int, str] = {}
    try:
        start_children(["ingest"], tmp_path, tmp_path, False, children)
    finally:
        running.set()
    (pid,) = children
    try:
        assert (tmp_path / "ingest.pid").read_text() == str(pid)
        assert _wait_for(lambda: (tmp_path / "ingest.port").exists())
        command = psutil.Process(pid).cmdline()
        assert command[command.index("serve") + 1] == "ingest"
    finally:
        os.kill(pid, signal.SIGTERM)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_stack_up_state_is_reused_and_stopped_by_down(local_env):
    state_dir = local_env / "state"
    stack = LocalStack(["ingest"], state_dir=state_dir, detach=True)
    try:
        stack.start()
        stack.write_state()
        found = running_services(state_dir)
        assert list(found) == ["ingest"]
        assert [r["status"] for r in stack_status(state_dir)] == ["SERVING"]
        with LocalStack(["ingest"], state_dir=state_dir) as reuse:
            assert reuse.services["ingest"].owned is False
            assert reuse.addresses() == stack.addresses()
        test_models_env = {**os.environ, "NLFPIPE_TEST_MODELS": "1"}
        with pytest.raises(StackMismatch, match="runs the real models, this run asks for gen"):
            LocalStack(["ingest"], state_dir=state_dir, env=test_models_env).start()
        recorded = json.loads((state_dir / "stack.json").read_text())["services"]["ingest"]
        assert recorded["models"]["test_models"] is False
        assert health_status(stack.addresses()["ingest"]) == "SERVING", "reused, not stopped"
        assert stop_recorded(state_dir) == ["ingest"]
        assert stack.services["ingest"].popen.wait(10) == 0
    finally:
        stack.stop()
    assert running_services(state_dir) == {}


def test_model_not_ready_reason_is_read_from_the_json_log(tmp_path):
    log = tmp_path / "pose.log"
    reason = "model 'nlf-l' is not ready: missing /cache/nlf-l/x.torchscript. Run `nlfpipe ...`"
    log.write_text(
        json.dumps({"event": "listening", "port": 1})
        + "\n"
        + json.dumps({"event": "model not ready", "reason": reason})
        + "\n"
    )
    assert _model_not_ready_reason(str(log)) == reason
    message = str(ModelsMissing({"pose": reason}))
    assert "  pose:\n    - model 'nlf-l' is not ready" in message
    assert "nlfpipe models list" in message and "RUN_ARGS=--test-models" in message


def _run_args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["run", overrides["video"], *overrides.get("argv", [])])


def test_cli_arguments_become_flow_parameters(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    args = _run_args(
        video=str(video),
        argv=["--subjects", "2,0", "--fov", "60", "--num-aug", "1", "--time-range", "0:01-0:03"],
    )
    params = validate_params(cli.params_from_args(args))
    assert params.subjects.indices == [2, 0]
    assert params.fov_deg == 60 and params.nlf.num_aug == 1
    assert params.time_window == (1.0, 3.0)
    points = cli.params_from_args(_run_args(video=str(video), argv=["--subject-point", "10,20"]))
    assert points["subjects"]["points"] == [{"x": 10.0, "y": 20.0}]
    with pytest.raises(ParameterError, match="subjects: 'a,b'"):
        cli.params_from_args(_run_args(video=str(video), argv=["--subjects", "a,b"]))


def test_cli_refuses_a_bad_parameter_before_starting_anything(tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    args = _run_args(video=str(video), argv=["--max-persons", "0", "--state-dir",
                                             str(tmp_path / "s")])  # fmt: skip
    assert cli._run(args) == 2
    assert "invalid parameter --max-persons: must be -1" in capsys.readouterr().err
    assert not (tmp_path / "s").exists(), "nothing may start for an invalid run"


def test_cli_messages_name_the_flags_not_the_fields():
    assert in_cli_terms("fov_deg: must be between 10 and 170") == (
        "--fov: must be between 10 and 170"
    )
    assert in_cli_terms("rendering needs the render stage; use renderer='none'") == (
        "rendering needs the render stage; use --renderer none"
    )
    assert in_cli_terms("use static_camera=true (--static-camera)").startswith(
        "use --static-camera"
    )
    assert in_cli_terms("candidate_indices contains 5, but") == "--subjects contains 5, but"
    assert in_cli_terms("nlf.num_aug: too many; the nlf_data folder") == (
        "--num-aug: too many; the nlf_data folder"
    )


def test_result_files_are_named_by_stage_output_and_media_type():
    assert result_file_name("fitting", "fits", "application/x-nlfpipe-fits+npz") == (
        "fitting-fits.npz"
    )
    assert result_file_name("ingest", "video", "video/mp4") == "ingest-video.mp4"
    assert result_file_name("tracking", "candidates_preview", "image/png").endswith(".png")
    assert result_file_name("x", "y", "application/octet-stream") == "x-y.bin"


def test_missing_models_stop_the_start_with_the_files_and_fetch_commands(local_env):
    env = {**os.environ, "NLFPIPE_MODEL_CACHE": str(local_env / "empty-cache")}
    stack = LocalStack(["pose", "fitting"], env=env, state_dir=local_env / "state")
    with pytest.raises(ModelsMissing) as info:
        stack.start()
    message = str(info.value)
    assert set(info.value.reasons) == {"pose", "fitting"}
    assert "nlf_l_multi_0.3.2.torchscript" in message
    assert "`.venv/bin/nlfpipe models fetch nlf-l`" in message
    assert "nlf-data" in message and "canonical_verts/smpl.npy" in message
    assert "kid_template.npy" in message and "basicmodel_f_lbs_10_207_0_v1.1.0.pkl" in message
    assert "make run VIDEO=<video> RUN_ARGS=--test-models" in message
    assert "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl" in message
    assert all(s.popen.poll() is not None for s in stack.services.values()), "services stopped"


def test_a_stack_with_other_models_is_told_apart_from_this_run(tmp_path):
    cache = tmp_path / "cache"
    weights = cache / "nlf-l" / "nlf_l_multi_0.3.2.torchscript"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"first")
    env = {"NLFPIPE_MODEL_CACHE": str(cache), "NLFPIPE_TEST_MODELS": "1"}
    started = service_models("pose", env)
    assert started["files"] == {
        "nlf-l/nlf_l_multi_0.3.2.torchscript": hashlib.sha256(b"first").hexdigest()
    }
    assert models_difference(started, service_models("pose", env)) == []
    real = service_models("pose", {**env, "NLFPIPE_TEST_MODELS": ""})
    assert models_difference(started, real) == [
        "the stack runs generated test models, this run asks for the real models"
    ]
    weights.write_bytes(b"second")
    (difference,) = models_difference(started, service_models("pose", env))
    assert difference.startswith("nlf-l/nlf_l_multi_0.3.2.torchscript: stack ")
    assert models_difference(None, started)[0].startswith("the stack did not record its models")
