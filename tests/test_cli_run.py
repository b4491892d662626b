"""`nlfpipe run` as a user runs it (a subprocess, no terminal) on a generated video with the
test models: a failing stage's one-line message, the results folder and its summary, the
re-run answered from the record without starting anything, and Ctrl-C during a stage."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from services.common.client import health_status
from tests.support.videos import make_test_video

NLFPIPE = str(Path(sys.executable).with_name("nlfpipe"))
#: Four services (ingest, tracking, pose, fitting): the smallest whole run.
SMALL_RUN = ["--test-models", "--static-camera", "--fps-factor", "1", "--renderer", "none"]


def _run(cwd: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [NLFPIPE, "run", "clip.mp4", *SMALL_RUN, *extra],
        cwd=cwd, capture_output=True, text=True, timeout=600, env=_env(),
    )  # fmt: skip
    return done, time.monotonic() - started


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NLFPIPE_", "PREFECT_"))}
    return {**env, "COLUMNS": "80"}


def _addresses(output: str) -> list[str]:
    line = next(x for x in output.splitlines() if x.startswith("services: "))
    return re.findall(r"@(127\.0\.0\.1:\d+)", line)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run that fails in tracking, a first run, and its re-run (in that order, one folder)."""
    cwd = tmp_path_factory.mktemp("cli-run")
    make_test_video(cwd / "clip.mp4", seconds=2.0)
    failed, _ = _run(cwd, "--subjects", "5")
    first, _ = _run(cwd)
    again, again_s = _run(cwd)
    return cwd, failed, first, again, again_s


def test_a_failing_stage_prints_one_line_and_where_the_log_is(runs):
    _, failed, *_ = runs
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert lines[-2] == (
        "the run failed: tracking: --subjects contains 5, but the init frame has 2 candidates "
        "(valid indices 0 to 1); see the candidates preview"
    )
    assert lines[-1].startswith("full log: .nlfpipe/logs/run.log")
    assert "Traceback" not in failed.stderr and "ERROR" not in failed.stderr
    kept = Path(runs[0], ".nlfpipe/logs/run.log.1")  # the next run rotated it
    assert "candidate_indices contains 5" in kept.read_text()


def test_results_get_their_own_folder_with_parameters_and_models(runs):
    cwd, _, first, _, _ = runs
    assert first.returncode == 0, first.stderr
    services = next(x for x in first.stderr.splitlines() if x.startswith("services: "))
    assert len(services) > 80 and len(_addresses(first.stderr)) == 4, "one unwrapped line"
    (folder,) = [p for p in (cwd / "nlfpipe-results").iterdir() if p.name != "latest"]
    assert re.fullmatch(r"clip-[0-9a-f]{8}", folder.name)
    assert (cwd / "nlfpipe-results" / "latest").resolve() == folder.resolve()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["parameters"]["static_camera"] is True
    assert summary["parameters"]["fps_factor"] == 1
    assert summary["test_models"] is True
    pose_files = {m["file"]: m["sha256"] for m in summary["models"]["pose"]["models"]}
    assert len(pose_files["nlf_l_multi_0.3.2.torchscript"]) == 64
    wall = summary["wall"]
    assert wall["total_s"] >= wall["startup_s"] + wall["flow_s"] > 0
    assert re.search(r"wall: stages [\d.]+ s, total [\d.]+ s \(start-up included\)", first.stderr)
    assert {p.name for p in folder.iterdir()} >= {"fitting-fits.npz", "pose-predictions.bcz"}
    logs = cwd / ".nlfpipe" / "logs"
    assert (logs / "tracking.log.1").exists(), "the failed run's service log is kept"
    assert not list((cwd / ".nlfpipe").glob("*.port")), "no port file is left behind"


def test_an_identical_rerun_is_answered_without_starting_anything(runs):
    cwd, _, first, again, again_s = runs
    assert again.returncode == 0, again.stderr
    assert "nothing was started" in again.stderr
    assert "services: " not in again.stderr
    assert again_s < 10.0, f"cached re-run took {again_s:.1f} s (load {os.getloadavg()[0]:.1f})"
    folders = [p for p in (cwd / "nlfpipe-results").iterdir() if p.name != "latest"]
    assert len(folders) == 1, "the same run, the same folder"


def _run_past_ingest(cwd: Path) -> subprocess.Popen:
    """A forced run of the clip, returned once its ingest stage is done (tracking runs)."""
    log = cwd / ".nlfpipe" / "logs" / "run.log"
    log.unlink(missing_ok=True)
    run = subprocess.Popen(
        [NLFPIPE, "run", "clip.mp4", *SMALL_RUN, "--force"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (log.exists() and "ingest done" in log.read_text()):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.05)
    return run


def test_ctrl_c_during_a_stage_stops_services_within_5_s(runs):
    run = _run_past_ingest(runs[0])
    interrupted = time.monotonic()
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    seconds = time.monotonic() - interrupted
    assert run.returncode == 130, stderr
    assert seconds < 5.0, f"{seconds:.1f} s to stop (load {os.getloadavg()[0]:.1f})"
    assert "interrupted; services stopped" in stderr
    assert "Traceback" not in stderr and "Crash detected" not in stderr
    assert all(health_status(a, timeout_s=1.0) == "UNREACHABLE" for a in _addresses(stderr))


def test_services_stop_when_the_run_is_killed(runs):
    """SIGKILL leaves no service behind: the fork server and its services end with the run."""
    run = _run_past_ingest(runs[0])
    services = [p for p in psutil.Process(run.pid).children(recursive=True)
                if "services.common.forkserver" in " ".join(p.cmdline())]  # fmt: skip
    assert len(services) == 5, "the fork server and its four services"
    run.kill()
    run.communicate(timeout=60)
    _, alive = psutil.wait_procs(services, timeout=10)
    assert not alive, f"left running: {[p.pid for p in alive]}"
