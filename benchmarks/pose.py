"""Overhead of the pose stage: decode, boxes, batching, transfers, writing (docs/benchmarks.md).

A 1280x720 30 fps video with 3 tracks (masks at 640x360) goes through ``estimate_video`` with
the NLF stand-in (6890 + 24 points, near-zero model cost). Each length runs in a fresh process
so that its peak RSS is its own. The last line printed is one JSON object.

    .venv/bin/python benchmarks/pose.py [--seconds 20] [--batch-size 8]

Device and torch threads come from the environment exactly as for the service
(``NLFPIPE_DEVICE``, ``NLFPIPE_TORCH_THREADS``); the JSON line gives both and the 1-minute load
average before and after.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WIDTH, HEIGHT, FPS, TRACKS = 1280, 720, 30, 3
MASK_SCALE = 2


def make_inputs(folder: Path, seconds: float) -> tuple[Path, Path]:
    from rlemasklib import RLEMask

    from services.common.formats.masks import write_track_masks
    from tests.support.videos import make_test_video

    video, masks = folder / f"v{seconds:g}.mp4", folder / f"m{seconds:g}.zst"
    truths = make_test_video(video, seconds=seconds, width=WIDTH, height=HEIGHT, fps=FPS,
                             figures=TRACKS)
    mh, mw = HEIGHT // MASK_SCALE, WIDTH // MASK_SCALE
    frames = []
    for t in range(len(truths[0].boxes)):
        frame = {}
        for track_id, truth in enumerate(truths):
            x, y, w, h = (truth.boxes[t] / MASK_SCALE).round().astype(int)
            mask = np.zeros((mh, mw), np.uint8)
            mask[max(y, 0):y + h, max(x, 0):x + w] = 1
            frame[track_id] = RLEMask.from_array(mask)
        frames.append(frame)
    write_track_masks(masks, frames, mh, mw)
    return video, masks


def warm_up(model, batch_size: int) -> None:
    """TorchScript's profiling executor re-optimizes during the first calls; a service pays
    that once per process, so it is kept out of the measurement."""
    from services.pose.nlf import BatchCameras, InferenceOptions

    k = np.array([[1000.0, 0, WIDTH / 2], [0, 1000.0, HEIGHT / 2], [0, 0, 1]])
    cameras = BatchCameras(np.repeat(k[None], batch_size, 0), np.zeros((batch_size, 5)),
                           np.repeat(np.eye(4)[None], batch_size, 0), np.array([0.0, -1, 0]))
    frames = np.zeros((batch_size, HEIGHT, WIDTH, 3), np.uint8)
    boxes = [np.array([[100.0, 100, 100, 300]] * TRACKS)] * batch_size
    for _ in range(12):
        model.estimate(frames, boxes, cameras, InferenceOptions())


def run_child(video: Path, masks: Path, batch_size: int) -> dict:
    from services.common.settings import load_settings, resolve_device
    from services.common.threads import apply_torch_threads
    from services.pose.inference import PoseJob, estimate_video
    from services.pose.nlf import NlfModel
    from services.pose.test_model import canonical_points, make_fake_nlf

    # The service's own configuration: device and torch threads as `nlfpipe serve pose`
    # sets them from the environment (NLFPIPE_DEVICE, NLFPIPE_TORCH_THREADS).
    settings = load_settings()
    threads = apply_torch_threads(settings)
    device = resolve_device(settings)
    verts, joints = canonical_points()
    model = NlfModel(make_fake_nlf(), np.concatenate([verts, joints]), len(verts), device)
    warm_up(model, batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "p.bcz"
        start = time.perf_counter()
        summary = estimate_video(model, PoseJob(video=video, output=output, masks=masks,
                                                batch_size=batch_size))
        seconds = time.perf_counter() - start
        size = output.stat().st_size
    return {
        "device": device,
        "torch_threads": threads,
        "frames": summary.frames,
        "person_frames": summary.person_frames,
        "seconds": round(seconds, 3),
        "frames_per_s": round(summary.frames / seconds, 1),
        "person_frames_per_s": round(summary.person_frames / seconds, 1),
        "write_ms_per_person_frame": round(
            summary.timings["write"] / summary.person_frames * 1000, 3),
        "timings_s": {k: round(v, 3) for k, v in summary.timings.items()},
        "output_bytes_per_person_frame": round(size / summary.person_frames),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--child", nargs=2, metavar=("VIDEO", "MASKS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(Path(args.child[0]), Path(args.child[1]), args.batch_size)))
        return
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for seconds in (args.seconds / 4, args.seconds):
            video, masks = make_inputs(Path(tmp), seconds)
            out = subprocess.run(
                [sys.executable, __file__, "--batch-size", str(args.batch_size), "--child",
                 str(video), str(masks)],
                check=True, capture_output=True, text=True,
            ).stdout
            runs[seconds] = json.loads(out.strip().splitlines()[-1])
            print(f"{seconds:g} s video: {runs[seconds]}", file=sys.stderr)
    full, short = runs[args.seconds], runs[args.seconds / 4]
    print(json.dumps({
        "video": f"{args.seconds:g} s {WIDTH}x{HEIGHT} {FPS} fps, {TRACKS} tracks",
        "batch_size": args.batch_size,
        "device": full["device"],
        "torch_threads": full["torch_threads"],
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        **{k: full[k] for k in ("frames_per_s", "person_frames_per_s",
                                "write_ms_per_person_frame", "peak_rss_mb")},
        "peak_rss_mb_quarter_length": short["peak_rss_mb"],
        "timings_s": full["timings_s"],
        "output_bytes_per_person_frame": full["output_bytes_per_person_frame"],
    }))


if __name__ == "__main__":
    main()
