"""Tracking and semseg throughput and peak memory on the CPU, random weights.

Generates test videos (light figures on a dark background, tests/support/videos.py), then runs
each measurement in a fresh process so that its peak RSS is its own:
- tracking: Mask R-CNN is replaced by the synthetic detector (random Mask R-CNN weights find
  no person), STCN with random weights propagates 2 persons (passes 2, permuted burn-in,
  memory 128 + 2 frames, top-k 20, morphological cleanup);
- semseg: DeepLabV3 ResNet-101 with random weights.
Both run on the short and the long video; peak memory must not grow with the video's length.
`tracking_fps` and `semseg_fps` are video frames per second of wall time (all passes
included). The last printed line is one JSON object.

Usage: python benchmarks/tracking.py [--seconds 10] [--long-seconds 40] [--fps 30]
       [--tracking-short-side 320] [--semseg-short-side 520] [--width 640] [--height 360]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_tracking(video: Path, short_side: int, workdir: Path) -> dict:
    import torch

    from services.common.stagerun import StageRun
    from services.tracking.pipeline import TrackingBackend, TrackingParams, compute_tracking
    from services.tracking.stcn import STCNPropagator
    from services.tracking.stcn_network import STCN
    from services.tracking.synthetic import SyntheticPersonDetector

    torch.manual_seed(0)
    network = STCN().eval()
    backend = TrackingBackend(
        "stcn",
        SyntheticPersonDetector(),
        lambda p: STCNPropagator(network, "cpu", p.mem_size, p.temp_mem_size, p.top_k, p.seed),
    )
    run = StageRun(workdir, {"video": video}, {}, None, None)
    start = time.perf_counter()
    outputs = compute_tracking(run, TrackingParams(short_side=short_side, max_persons=2), backend)
    seconds = time.perf_counter() - start
    return {"frames": outputs.counts["frames"], "seconds": seconds}


def run_semseg(video: Path, short_side: int, workdir: Path) -> dict:
    import torch

    from services.common.stagerun import StageRun
    from services.semseg.deeplab import DeepLabPersonSegmenter, build_deeplabv3
    from services.semseg.pipeline import SemsegParams, compute_semseg

    torch.manual_seed(0)
    segmenter = DeepLabPersonSegmenter(build_deeplabv3(), "cpu")
    run = StageRun(workdir, {"video": video}, {}, None, None)
    start = time.perf_counter()
    params = SemsegParams(short_side=short_side, batch_size=4)
    outputs = compute_semseg(run, params, segmenter, "deeplabv3")
    seconds = time.perf_counter() - start
    return {"frames": outputs.counts["frames"], "seconds": seconds}


def child(stage: str, video: Path, short_side: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        runner = run_tracking if stage == "tracking" else run_semseg
        result = runner(video, short_side, Path(tmp))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(stage: str, video: Path, short_side: int) -> dict:
    command = [sys.executable, __file__, "--child", stage, "--video", str(video)]
    command += ["--short-side", str(short_side)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["fps"] = result["frames"] / result["seconds"]
    print(f"{stage} {video.name} short side {short_side}: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--long-seconds", type=float, default=40.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--tracking-short-side", type=int, default=320)
    parser.add_argument("--semseg-short-side", type=int, default=520)
    parser.add_argument("--child", choices=["tracking", "semseg"])
    parser.add_argument("--video", type=Path)
    parser.add_argument("--short-side", type=int)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.video, args.short_side)
        return

    from tests.support.videos import make_test_video

    with tempfile.TemporaryDirectory() as tmp:
        videos = {}
        for name, seconds in (("short", args.seconds), ("long", args.long_seconds)):
            videos[name] = Path(tmp, f"{name}.mp4")
            make_test_video(videos[name], seconds, args.width, args.height, args.fps, figures=2)
        results = {
            (stage, name): measure(stage, video, side)
            for stage, side in (
                ("tracking", args.tracking_short_side),
                ("semseg", args.semseg_short_side),
            )
            for name, video in videos.items()
        }
    peak = {
        name: max(results[s, name]["peak_rss_mb"] for s in ("tracking", "semseg"))
        for name in videos
    }
    summary = {
        "tracking_fps": round(results["tracking", "short"]["fps"], 3),
        "semseg_fps": round(results["semseg", "short"]["fps"], 3),
        "peak_rss_mb": round(peak["short"], 1),
        "peak_rss_mb_long": round(peak["long"], 1),
        "tracking_peak_rss_mb": [round(results["tracking", n]["peak_rss_mb"], 1) for n in videos],
        "semseg_peak_rss_mb": [round(results["semseg", n]["peak_rss_mb"], 1) for n in videos],
        "seconds": [args.seconds, args.long_seconds],
        "video": f"{args.width}x{args.height}@{args.fps}",
        "tracking_short_side": args.tracking_short_side,
        "semseg_short_side": args.semseg_short_side,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
