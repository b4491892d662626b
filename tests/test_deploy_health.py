"""`nlfpipe health --stage`, and the stage image's HEALTHCHECK and ENTRYPOINT exactly as the
template (deploy/Dockerfile) writes them, run here against real servers."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.common.cli import main
from services.common.server import build_server
from services.common.settings import load_settings
from services.common.stages import STAGES
from tests.support.deploy import TEMPLATE, resolve
from tests.support.toy_stage import build_toy

BIN = Path(sys.executable).parent


def _exec_form(instruction: str, keyword: str) -> list[str]:
    return json.loads(instruction.split(keyword, 1)[1].strip())


def _instruction(stage: str, keyword: str) -> str:
    base = "cuda" if STAGES[stage].learned else "slim"
    chain = resolve(TEMPLATE, {"STAGE": stage, "BASE": base}, target="stage")
    (line,) = [line for s in chain for line in s.lines if line.startswith(keyword + " ")]
    return line


@pytest.fixture
def toy_pose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A server with the pose contract (NOT_SERVING until `gate` is set) on a free port."""
    monkeypatch.setenv("NLFPIPE_STORE_ROOT", str(tmp_path / "store"))
    gate = threading.Event()
    running = build_server(build_toy(load_gate=gate), port=0, settings=load_settings())
    try:
        yield running.port, gate
    finally:
        gate.set()
        running.stop(0)


def _wait_serving(port: int) -> None:
    deadline = time.monotonic() + 10
    while main(["health", f"127.0.0.1:{port}", "--stage", "pose", "--timeout", "1"]) != 0:
        assert time.monotonic() < deadline, "never SERVING"
        time.sleep(0.05)


def test_health_stage_finds_the_port_and_service_name(toy_pose, monkeypatch, capsys) -> None:
    port, gate = toy_pose
    monkeypatch.setenv("NLFPIPE_PORT", str(port))
    assert main(["health", "--stage", "pose", "--timeout", "2"]) == 1
    assert capsys.readouterr().out.strip() == "NOT_SERVING", "the model is not loaded yet"
    gate.set()
    _wait_serving(port)
    capsys.readouterr()
    assert main(["health", "--stage", "pose"]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    # Another stage's service name is unknown to this server.
    assert main(["health", f"127.0.0.1:{port}", "--stage", "fitting"]) == 1
    assert capsys.readouterr().out.strip() == "SERVICE_UNKNOWN"


def test_health_stage_defaults_to_the_stage_table_port(monkeypatch, capsys) -> None:
    monkeypatch.delenv("NLFPIPE_PORT", raising=False)
    import services.common.client as client

    asked = {}

    def fake_status(address: str, service: str = "", timeout_s: float = 5.0) -> str:
        asked.update(address=address, service=service)
        return "SERVING"

    monkeypatch.setattr(client, "health_status", fake_status)
    assert main(["health", "--stage", "slam"]) == 0
    assert asked == {"address": "127.0.0.1:50054", "service": "nlfpipe.slam.v1.SlamService"}


def test_health_needs_an_address_or_a_stage() -> None:
    with pytest.raises(SystemExit, match="address"):
        main(["health"])
    with pytest.raises(SystemExit):
        main(["health", "--stage", "nosuchstage"])


def test_image_healthcheck_command_checks_its_stage(toy_pose) -> None:
    port, gate = toy_pose
    command = _exec_form(_instruction("pose", "HEALTHCHECK"), " CMD ")
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "NLFPIPE_STAGE": "pose", "NLFPIPE_PORT": str(port)}

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    result = run()
    assert result.returncode == 1 and result.stdout.strip() == "NOT_SERVING"
    gate.set()
    _wait_serving(port)
    result = run()
    assert result.returncode == 0 and result.stdout.strip() == "SERVING", result.stderr


def test_image_entrypoint_serves_its_stage_with_the_arguments_given(tmp_path: Path) -> None:
    """ENTRYPOINT + `--port 0 --port-file F` (what `docker run IMAGE ARGS` appends) serves the
    stage of NLFPIPE_STAGE, and the HEALTHCHECK then finds it SERVING."""
    entrypoint = _exec_form(_instruction("ingest", "ENTRYPOINT"), "ENTRYPOINT")
    port_file = tmp_path / "port"
    env = {
        **os.environ,
        "PATH": f"{BIN}:/usr/bin:/bin",
        "NLFPIPE_STAGE": "ingest",
        "NLFPIPE_STORE_ROOT": str(tmp_path / "store"),
        "NLFPIPE_LOG_FORMAT": "text",
    }
    env.pop("NLFPIPE_PORT", None)
    proc = subprocess.Popen(
        [*entrypoint, "--port", "0", "--port-file", str(port_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the stage did not start"
            time.sleep(0.05)
        port = port_file.read_text()
        healthcheck = _exec_form(_instruction("ingest", "HEALTHCHECK"), " CMD ")
        status = "UNREACHABLE"
        while status != "SERVING" and time.monotonic() < deadline:
            status = subprocess.run(
                healthcheck,
                env={**env, "NLFPIPE_PORT": port},
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()
        assert status == "SERVING"
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, "a clean stop on SIGTERM through the shell's exec"
