"""The shared server: health gating, error mapping, progress streams, cancellation, SIGTERM."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from nlfpipe.pose.v1 import pose_pb2, pose_pb2_grpc
from services.common.client import call_stage, health_status, open_channel, wait_serving
from services.common.errors import ModelNotReady
from services.common.server import build_server
from services.common.settings import load_settings
from tests.support.toy_stage import build_toy

SERVICE = "nlfpipe.pose.v1.PoseService"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings({"NLFPIPE_STORE_ROOT": str(tmp_path), "NLFPIPE_GRACE_SECONDS": "2"})


def _stub(port: int):
    return pose_pb2_grpc.PoseServiceStub(open_channel(f"127.0.0.1:{port}"))


def test_health_is_not_serving_until_loaded(settings) -> None:
    gate = threading.Event()
    running = build_server(build_toy(load_gate=gate), port=0, settings=settings)
    address = f"127.0.0.1:{running.port}"
    try:
        assert health_status(address, SERVICE) == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as err:
            call_stage(_stub(running.port).Run, pose_pb2.RunRequest(), timeout_s=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        gate.set()
        wait_serving(address, SERVICE, timeout_s=5)
        assert health_status(address, "") == "SERVING"
        assert health_status(address, "no.such.Service") == "SERVICE_UNKNOWN"
    finally:
        running.stop(0)


def test_missing_model_keeps_not_serving_and_explains(settings) -> None:
    error = ModelNotReady("model file nlf.pt is missing; run `nlfpipe models fetch nlf-l`")
    running = build_server(build_toy(load_error=error), port=0, settings=settings)
    try:
        time.sleep(0.3)
        assert health_status(f"127.0.0.1:{running.port}", SERVICE) == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as err:
            call_stage(_stub(running.port).Run, pose_pb2.RunRequest(), timeout_s=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "nlfpipe models fetch nlf-l" in err.value.details()
    finally:
        running.stop(0)


def test_progress_result_and_error_mapping(settings) -> None:
    running = build_server(build_toy(), port=0, settings=settings)
    try:
        assert running.wait_ready(5)
        stub = _stub(running.port)
        events = []
        result = call_stage(
            stub.Run,
            pose_pb2.RunRequest(batch_size=10),
            timeout_s=10,
            on_progress=events.append,
            run_id="run-1",
        )
        assert isinstance(result, pose_pb2.RunResult)
        assert [e.done for e in events] == list(range(1, 11))
        with pytest.raises(grpc.RpcError) as err:
            call_stage(stub.Run, pose_pb2.RunRequest(batch_size=1), timeout_s=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "batch_size" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            call_stage(stub.Run, pose_pb2.RunRequest(batch_size=2), timeout_s=5)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in err.value.details()
    finally:
        running.stop(0)


def test_deadline_cancels_the_work(settings) -> None:
    service = build_toy()
    running = build_server(service, port=0, settings=settings)
    try:
        assert running.wait_ready(5)
        with pytest.raises(grpc.RpcError) as err:
            call_stage(_stub(running.port).Run, pose_pb2.RunRequest(batch_size=100), timeout_s=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert service.servicer.cancelled.wait(2)
    finally:
        running.stop(0)


def test_sigterm_during_a_long_request_exits_cleanly(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    env = {
        **os.environ,
        "NLFPIPE_STORE_ROOT": str(tmp_path / "store"),
        "NLFPIPE_GRACE_SECONDS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.toy_stage", str(port_file)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text()}"
        wait_serving(address, SERVICE, timeout_s=10)
        outcome: dict = {}

        def long_call() -> None:
            try:
                call_stage(
                    _stub(int(port_file.read_text())).Run,
                    pose_pb2.RunRequest(batch_size=200),
                    timeout_s=60,
                )
            except grpc.RpcError as e:
                outcome["code"] = e.code()

        caller = threading.Thread(target=long_call)
        caller.start()
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - started < 5
        caller.join(10)
        assert outcome["code"] in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert '"event": "stopping"' in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
