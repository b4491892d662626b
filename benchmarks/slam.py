"""Slam throughput, accuracy and peak memory on rendered moving-camera videos.

Renders (tests/support/world.py) a 640x360 walk pacing 4 m forward and back with two figures at
30 fps, `--seconds`
long and `--long-seconds` long (cached in --cache), writes the figures' true masks as track
masks, then runs each measurement in a fresh process so that its peak RSS is its own:
- colmap on the short video: `frames_per_s` (video frames per second of wall time, every step
  included), `ate_pct_of_path` (evo's Sim(3)-aligned RMSE as % of the true path length),
  `rotation_median_deg`, the report's step timings, `peak_rss_mb`;
- colmap on the long video: `peak_rss_mb_long` (must not grow with the video's length);
- droid on the short video where CUDA and DROID-SLAM are present (skipped otherwise).
The thread count follows the machine (pass `taskset -c 0,1` for the 2-core target). The last
printed line is one JSON object.

Usage: python benchmarks/slam.py [--seconds 20] [--long-seconds 60] [--fov 60] [--unknown-fov]
       [--mapping-threads 1] [--cache .nlfpipe/bench-slam]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def render(path: Path, seconds: float) -> None:
    import numpy as np

    from tests.support.world import make_moving_camera_video, write_truth_masks

    truth = make_moving_camera_video(path, seconds=seconds, width=640, height=360, fps=30,
                                     figures=2, motion="pace", fov_deg=60.0,
                                     keep_masks=True)  # fmt: skip
    write_truth_masks(path.with_suffix(".masks.zst"), truth, short_side=320)
    truth.cameras.save(path.with_suffix(".cameras.npz"))
    np.save(path.with_suffix(".boxes.npy"), truth.boxes)


def measure(backend_name: str, video: Path, fov: float, mapping_threads: int) -> dict:
    from services.common.formats.cameras import CameraTrack
    from services.common.settings import load_settings
    from services.common.stagerun import StageRun
    from services.slam.backends import choose_backend, load_models
    from services.slam.colmap_backend import ColmapBackend
    from services.slam.pipeline import SlamParams, compute_slam
    from tests.support.slam_runs import trajectory_error

    models = load_models(load_settings())
    backend = choose_backend(backend_name, models)
    if backend_name == "colmap" and mapping_threads != backend.settings.sfm.mapping_threads:
        sfm = replace(backend.settings.sfm, mapping_threads=mapping_threads)
        backend = ColmapBackend(replace(backend.settings, sfm=sfm))
    with tempfile.TemporaryDirectory() as tmp:
        run = StageRun(Path(tmp), {"video": video,
                                   "track_masks": video.with_suffix(".masks.zst")}, {}, None,
                       None)  # fmt: skip
        start = time.perf_counter()
        out = compute_slam(run, SlamParams(backend=backend_name, fov_deg=fov,
                                           scale_source="none"), backend, None)  # fmt: skip
        seconds = time.perf_counter() - start
        report = json.loads(out.files["report"].path.read_text())
        cameras = CameraTrack.load(out.files["cameras"].path)
    error = trajectory_error(cameras, CameraTrack.load(video.with_suffix(".cameras.npz")))
    return {
        "frames": report["frames"], "seconds": seconds,
        "frames_per_s": report["frames"] / seconds, "keyframes": report["keyframe_count"],
        "ate_pct_of_path": error.ate_pct_of_path, "rotation_median_deg": error.rotation_median_deg,
        "fov_deg": report["intrinsics"]["fov_deg"], "timings_s": report["timings_s"],
        "peak_rss_mb": _peak_rss_mb(),
    }  # fmt: skip


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Not getrusage's ru_maxrss: Linux carries that across exec,
    so a child started by a parent that had rendered the videos (a GB of masks) reported the
    parent's peak instead of its own."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--long-seconds", type=float, default=60.0)
    parser.add_argument("--fov", type=float, default=60.0)
    parser.add_argument("--unknown-fov", action="store_true", help="let slam estimate the FOV")
    parser.add_argument("--cache", type=Path, default=ROOT / ".nlfpipe" / "bench-slam")
    parser.add_argument(
        "--mapping-threads",
        type=int,
        default=1,
        help="colmap mapping threads (1, the default, is deterministic; 0: all)",
    )
    parser.add_argument("--child", nargs=4, metavar=("BACKEND", "VIDEO", "FOV", "THREADS"))
    args = parser.parse_args()
    if args.child:
        backend, video, fov, threads = args.child
        print(json.dumps(measure(backend, Path(video), float(fov), int(threads))))
        return

    args.cache.mkdir(parents=True, exist_ok=True)
    videos = {}
    for name, seconds in (("short", args.seconds), ("long", args.long_seconds)):
        videos[name] = args.cache / f"pace-{seconds:g}s.mp4"
        if not videos[name].with_suffix(".boxes.npy").exists():
            started = time.perf_counter()
            render(videos[name], seconds)
            print(f"rendered {videos[name].name} in {time.perf_counter() - started:.0f} s")
    load = os.getloadavg()
    fov = "0" if args.unknown_fov else str(args.fov)
    threads = str(args.mapping_threads)
    short = _child(["colmap", str(videos["short"]), fov, threads])
    print(f"colmap {args.seconds:g} s: {short['frames_per_s']:.2f} frames/s, ATE "
          f"{short['ate_pct_of_path']:.3f}% of the path, {short['keyframes']} keyframes, "
          f"timings {short['timings_s']}, peak RSS {short['peak_rss_mb']:.0f} MB")  # fmt: skip
    long = _child(["colmap", str(videos["long"]), fov, threads])
    print(f"colmap {args.long_seconds:g} s: {long['frames_per_s']:.2f} frames/s, ATE "
          f"{long['ate_pct_of_path']:.3f}%, peak RSS {long['peak_rss_mb']:.0f} MB")  # fmt: skip
    result = {
        "frames_per_s": round(short["frames_per_s"], 3),
        "ate_pct_of_path": round(short["ate_pct_of_path"], 4),
        "rotation_median_deg": round(short["rotation_median_deg"], 4),
        "peak_rss_mb": round(short["peak_rss_mb"], 1),
        "peak_rss_mb_long": round(long["peak_rss_mb"], 1),
        "long_frames_per_s": round(long["frames_per_s"], 3),
        "long_ate_pct_of_path": round(long["ate_pct_of_path"], 4),
        "keyframes": short["keyframes"],
        "timings_s": short["timings_s"],
        "mapping_threads": args.mapping_threads,
        "cores": os.cpu_count(),
        "load_avg_1m_before": round(load[0], 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        try:
            droid = _child(["droid", str(videos["short"]), fov, threads])
            result.update(droid_frames_per_s=round(droid["frames_per_s"], 3),
                          droid_ate_pct_of_path=round(droid["ate_pct_of_path"], 4))  # fmt: skip
        except RuntimeError as err:
            result["droid_skipped"] = str(err).strip().splitlines()[-1]
    else:
        result["droid_skipped"] = "no CUDA device"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
