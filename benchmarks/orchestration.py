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

Usage: .venv/bin/python benchmarks/orchestration.py [--seconds 20] [--store s3|local]
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
    args = parser.parse_args()

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
        print(f"{s.stage:<10} compute {s.compute_seconds:7.2f} s  call {s.wall_seconds:7.2f} s  "
              f"{dict(s.counts)}")
    print(f"services start-up {services_startup_s:.2f} s; second run: "
          f"{sum(s.cache_hit for s in second.stages)}/{len(second.stages)} cache hits")
    print(json.dumps({
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
    }))  # fmt: skip


if __name__ == "__main__":
    main()
