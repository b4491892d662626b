"""Interpolation throughput and peak memory: the whole stage (decode, middle frames, encode).

Generates test videos (light figures moving over a textured background,
tests/support/videos.py) at 1280x720, 30 fps, and runs each measurement in a fresh process so
that its peak RSS is its own (the ffmpeg encoder is a separate process; its peak is reported
beside):
- `flow_output_fps`: the weightless backend (DIS optical flow) on 10 s;
- `rife_cpu_output_fps`: RIFE v4.18 with random weights on the CPU, on the first
  `--rife-seconds` (it is slow; the rate does not depend on the length);
- `overhead_output_fps`: everything but the model (the middle frame is a copy of its first
  neighbour): decoding, colour conversions, encoding;
- `peak_rss_mb` and `peak_rss_mb_long`: the flow backend on 10 s and on 40 s (flat in length).
Output fps are frames of the doubled video per second of wall time. With a CUDA device it also
measures RIFE in fp16 at 720p and 1080p; without one that part is skipped. Targets on two
cores: flow >= 20 output fps at 720p, overhead >= 100. The last printed line is one JSON object.

Usage: python benchmarks/interpolation.py [--seconds 10] [--long-seconds 40] [--rife-seconds 0.5]
"""

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {"flow_output_fps": 20.0, "overhead_output_fps": 100.0}


class Copying:
    """No model: the middle frame is its first neighbour (measures everything else)."""

    name = "copy"
    batch_size = 4

    def middles(self, firsts, seconds, flow_scale):
        return [f.yuv for f in firsts]


def backend_for(mode: str):
    if mode == "overhead":
        return Copying()
    if mode == "flow":
        from services.interpolation.flow import FlowInterpolator

        return FlowInterpolator()
    import torch

    from services.common.settings import load_settings
    from services.common.threads import apply_torch_threads
    from services.interpolation.ifnet import IFNet
    from services.interpolation.rife import RifeInterpolator

    apply_torch_threads(load_settings())  # the service's thread count (NLFPIPE_TORCH_THREADS)
    torch.manual_seed(0)
    device = "cuda" if mode == "rife-gpu" else "cpu"
    return RifeInterpolator(IFNet(), device, [])


class MemorySampler(threading.Thread):
    """Samples the RSS of this process and of its children (the ffmpeg encoder) every 0.05 s.

    (ru_maxrss would count the RSS that the parent had when it forked this process.)"""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mb = 0.0
        self.encoder_peak_mb = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.wait(0.05):
            self.peak_mb = max(self.peak_mb, me.memory_info().rss / 2**20)
            for process in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss = process.memory_info().rss / 2**20
                    self.encoder_peak_mb = max(self.encoder_peak_mb, rss)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the encoder, once waited for)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def child(mode: str, video: Path) -> None:
    from services.common.stagerun import StageRun
    from services.interpolation.pipeline import InterpolationParams, compute_interpolation

    backend = backend_for(mode)
    memory = MemorySampler()
    memory.start()
    with tempfile.TemporaryDirectory() as tmp:
        run = StageRun(Path(tmp), {"video": video}, {}, None, None)
        cpu_before = cpu_seconds()
        start = time.perf_counter()
        outputs = compute_interpolation(run, InterpolationParams(), backend)
        seconds = time.perf_counter() - start
        cpu = cpu_seconds() - cpu_before
    memory.stop.set()
    memory.join()
    print(json.dumps({
        "frames": outputs.counts["frames"],
        "seconds": seconds,
        "output_fps": outputs.counts["frames"] / seconds,
        "model_seconds": run.timings.get("interpolate", 0.0),
        "cpu_seconds": cpu,  # this process and the encoder, all threads
        "cpu_ms_per_output_frame": 1000 * cpu / outputs.counts["frames"],
        "peak_rss_mb": memory.peak_mb,
        "encoder_peak_rss_mb": memory.encoder_peak_mb,
    }))  # fmt: skip


def measure(mode: str, video: Path) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--video", str(video)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(f"{mode} {video.name}: {json.dumps(result)}", flush=True)
    return result


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--long-seconds", type=float, default=40.0)
    parser.add_argument("--rife-seconds", type=float, default=0.5)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--child", choices=["flow", "overhead", "rife-cpu", "rife-gpu"])
    parser.add_argument("--video", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.video)
        return

    import torch

    from tests.support.videos import make_test_video

    print(f"before: {load()} on {os.cpu_count()} CPUs", flush=True)
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        videos = {}
        sizes = [("short", args.seconds, 1280, 720), ("long", args.long_seconds, 1280, 720),
                 ("rife", args.rife_seconds, 1280, 720)]  # fmt: skip
        if gpu:
            sizes += [("gpu720", 4.0, 1280, 720), ("gpu1080", 4.0, 1920, 1080)]
        for name, seconds, width, height in sizes:
            videos[name] = Path(tmp, f"{name}.mp4")
            make_test_video(videos[name], seconds, width, height, args.fps, figures=2)
        flow = measure("flow", videos["short"])
        overhead = measure("overhead", videos["short"])
        rife = measure("rife-cpu", videos["rife"])
        flow_long = measure("flow", videos["long"])
        gpu_results = {"rife_gpu": "skipped: no CUDA device"}
        if gpu:
            gpu_results = {
                f"rife_gpu_fp16_output_fps_{name[3:]}p": round(
                    measure("rife-gpu", videos[name])["output_fps"], 2
                )
                for name in ("gpu720", "gpu1080")
            }
    measured = {"flow_output_fps": flow["output_fps"],
                "overhead_output_fps": overhead["output_fps"]}  # fmt: skip
    summary = {
        "flow_output_fps": round(flow["output_fps"], 2),
        "rife_cpu_output_fps": round(rife["output_fps"], 2),
        "overhead_output_fps": round(overhead["output_fps"], 2),
        "peak_rss_mb": round(flow["peak_rss_mb"], 1),
        "peak_rss_mb_long": round(flow_long["peak_rss_mb"], 1),
        "encoder_peak_rss_mb": [round(flow["encoder_peak_rss_mb"], 1),
                                round(flow_long["encoder_peak_rss_mb"], 1)],  # fmt: skip
        "flow_model_share": round(flow["model_seconds"] / flow["seconds"], 3),
        "cpu_ms_per_output_frame": {name: round(r["cpu_ms_per_output_frame"], 1) for name, r in
                                    (("flow", flow), ("overhead", overhead), ("rife_cpu", rife))},
        **gpu_results,
        "targets_met": {name: measured[name] >= target for name, target in TARGETS.items()},
        "seconds": [args.seconds, args.long_seconds, args.rife_seconds],
        "video": f"1280x720@{args.fps}",
        "load": load(),
    }  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
