"""Orchestration overhead of the end-to-end run (docs/benchmarks.md, "orchestrator").

Generates a 20 s 640x360 video with moving figures, starts the stage services as processes on
small generated test models with moto's S3 server as the store, and runs the process-video flow
in Prefect's ephemeral mode twice (the second run is all cache hits). The last line printed is
one JSON object:
  wall_s            first run, Prefect start-up included
  stage_compute_s   sum of the services' own reported compute time
  prefect_startup_s ephemeral Prefect start-up (a no-op flow run first in this process)
  overhead_s        wall_s - stage_compute_s - prefect_startup_s
  overhead_per_call_s, stage_calls, cache_rerun_s, cache_rerun_ratio (rerun / first flow run)
and, from `nlfpipe run --test-models` run as a subprocess as a user runs it on a short
generated video (--cli-seconds, default 2 s; --static-camera), in a fresh folder:
  cli_first_ever_overhead_s        very first run: wall minus the stages' compute (Prefect's
                                   database is created and migrated here, once)
  cli_startup_overhead_s           first run of another video, Prefect's database kept
  cli_cached_rerun_s               the same command again (answered from the run's record)
  cli_cached_rerun_via_services_s  again without the record: services start, all cache hits
--cli-only skips the in-process flow part (its keys are then absent).

Usage: .venv/bin/python benchmarks/orchestration.py [--seconds 20] [--store s3|local]
       [--cli-seconds 2] [--cli-only]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("NLFPIPE_GPU_ADMISSION", "0")  # as `nlfpipe run` in ephemeral mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--store", choices=("s3", "local"), default="s3")
    parser.add_argument("--cli-seconds", type=float, default=2.0)
    parser.add_argument("--cli-only", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    cli = cli_timings(args.cli_seconds)
    result = {} if args.cli_only else flow_timings(args)
    result.update(cli)
    result["load_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result))


#: The generated video's camera does not move: SLAM (colmap) on it is not reliable.
CLI_OPTIONS = ("--test-models", "--static-camera")


def cli_timings(seconds: float) -> dict:
    """Wall times of `nlfpipe run` subprocesses in a fresh folder (see the module docstring)."""
    import shutil
    import subprocess

    from tests.support.videos import make_test_video

    nlfpipe = str(Path(sys.executable).with_name("nlfpipe"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NLFPIPE_", "PREFECT_"))}

    def run(cwd: Path, video: str) -> tuple[float, float]:
        started = time.monotonic()
        done = subprocess.run([nlfpipe, "run", video, *CLI_OPTIONS], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=1800)  # fmt: skip
        wall = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"nlfpipe run {video} failed:\n{done.stderr[-3000:]}")
        summary = json.loads((cwd / "nlfpipe-results" / "latest" / "summary.json").read_text())
        compute = sum(s["compute_seconds"] for s in summary["stages"])
        print(
            f"nlfpipe run {video}: wall {wall:.2f} s, stage compute {compute:.2f} s",
            file=sys.stderr,
        )
        return wall, compute

    with tempfile.TemporaryDirectory(prefix="nlfpipe-bench-cli-") as tmp:
        cwd = Path(tmp)
        make_test_video(cwd / "a.mp4", seconds=seconds, seed=0)
        make_test_video(cwd / "b.mp4", seconds=seconds + 0.5, seed=0)  # another video
        first_wall, first_compute = run(cwd, "a.mp4")
        rerun_wall, _ = run(cwd, "a.mp4")
        shutil.rmtree(cwd / ".nlfpipe" / "runs")
        via_services_wall, _ = run(cwd, "a.mp4")
        other_wall, other_compute = run(cwd, "b.mp4")
    return {
        "cli_video": f"{seconds:g}s 320x240",
        "cli_first_ever_overhead_s": round(first_wall - first_compute, 3),
        "cli_startup_overhead_s": round(other_wall - other_compute, 3),
        "cli_first_run_wall_s": round(other_wall, 3),
        "cli_cached_rerun_s": round(rerun_wall, 3),
        "cli_cached_rerun_via_services_s": round(via_services_wall, 3),
    }


def flow_timings(args: argparse.Namespace) -> dict:
    """The in-process flow part: services, ephemeral Prefect, two flow runs."""

    from contextlib import ExitStack

    from tests.support.s3 import moto_server, s3_env
    from tests.support.videos import make_test_video

    with tempfile.TemporaryDirectory(prefix="nlfpipe-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        os.environ["PREFECT_HOME"] = str(root / "prefect")
        if args.store == "s3":
            os.environ.update(s3_env(stack.enter_context(moto_server()), "bench"))
        else:
            os.environ.update({"NLFPIPE_STORE": "local", "NLFPIPE_STORE_ROOT": str(root / "s")})

        from orchestrator.testmodels import install_test_models

        os.environ.update(install_test_models(root / "models"))
        video = root / "bench.mp4"
        make_test_video(video, seconds=args.seconds, width=args.width, height=args.height)

        from prefect import flow

        from orchestrator.flow import process_video
        from orchestrator.params import VideoParams, required_stages
        from orchestrator.stack import LocalStack

        params = VideoParams(video=str(video))
        started = time.monotonic()
        services = stack.enter_context(LocalStack(required_stages(params), state_dir=root / "st"))
        os.environ.update(services.address_env())
        services_startup_s = time.monotonic() - started

        @flow(name="warm-up")
        def warm_up() -> None:
            return None

        started = time.monotonic()
        warm_up()
        prefect_startup_s = time.monotonic() - started

        started = time.monotonic()
        first = process_video(params)
        first_flow_s = time.monotonic() - started
        started = time.monotonic()
        second = process_video(params)
        cache_rerun_s = time.monotonic() - started

    compute = first.compute_seconds
    wall = prefect_startup_s + first_flow_s
    calls = len(first.stages)
    for s in first.stages:
        print(
            f"{s.stage:<10} compute {s.compute_seconds:7.2f} s  call {s.wall_seconds:7.2f} s  "
            f"{dict(s.counts)}"
        )
    print(
        f"services start-up {services_startup_s:.2f} s; second run: "
        f"{sum(s.cache_hit for s in second.stages)}/{len(second.stages)} cache hits"
    )
    return {
        "video": f"{args.seconds:g}s {args.width}x{args.height}",
        "store": args.store,
        "frames": first.frames,
        "people_found": first.people_found,
        "wall_s": round(wall, 3),
        "stage_compute_s": round(compute, 3),
        "prefect_startup_s": round(prefect_startup_s, 3),
        "overhead_s": round(wall - compute - prefect_startup_s, 3),
        "stage_calls": calls,
        "overhead_per_call_s": round((wall - compute - prefect_startup_s) / calls, 3),
        "services_startup_s": round(services_startup_s, 3),
        "cache_rerun_s": round(cache_rerun_s, 3),
        "cache_rerun_ratio": round(cache_rerun_s / first_flow_s, 3),
    }  # fmt: skip


if __name__ == "__main__":
    main()
