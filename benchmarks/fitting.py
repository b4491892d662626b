"""Fitting stage benchmark: a synthetic 30 s clip at 30 fps with 3 people (2700 track-frames),
noisy predictions read from a predictions file, the whole stage in-process on the CPU.

Usage: .venv/bin/python benchmarks/fitting.py [--seconds 30] [--fps-factor 1] [--workers 2]
The last printed line is one JSON object (CPU seconds and the 1-minute load average beside the
wall time: the machine may be shared).
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.fitting.pipeline import FittingParams, run_fitting  # noqa: E402
from services.fitting.service import read_tracks  # noqa: E402
from services.fitting.smpl_fit import SmplFitter  # noqa: E402
from services.fitting.synthetic_body_model import write_synthetic_smpl  # noqa: E402
from tests.support.scenes import (  # noqa: E402
    Noise,
    make_scene,
    predictions_for,
    truth,
    write_predictions,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--fps-factor", type=int, default=1)
    parser.add_argument("--workers", type=int, default=FittingParams().workers)
    args = parser.parse_args()
    fps = 30.0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = write_synthetic_smpl(tmp / "models", genders=("neutral",))
        smpl = SmplFitter(root / "smpl")
        n = int(args.seconds * fps)
        scene = make_scene(smpl.body_model, num_frames=n, num_people=3, seed=7)
        noise = Noise(point_sigma_mm=30, outlier_fraction=0.05, outlier_mm=500, scale_jitter=0.1)
        preds = {p.track_id: predictions_for(smpl.body_model, scene, p, noise, p.track_id)
                 for p in scene.people}
        write_predictions(tmp / "preds.bcz", scene.cameras, preds, n)
        gt = {p.track_id: truth(smpl.body_model, p)["joints"] for p in scene.people}
        raw_error = np.mean([np.linalg.norm(preds[k]["joints"] / 1000 - gt[k], axis=-1).mean()
                             for k in gt])
        del preds
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        load = os.getloadavg()[0]
        start, cpu_start = time.perf_counter(), time.process_time()
        num_frames, tracks = read_tracks(tmp / "preds.bcz", smpl.vertex_subset)
        read_s = time.perf_counter() - start
        params = FittingParams(workers=args.workers)
        out = run_fitting(tracks, scene.cameras, smpl, fps, args.fps_factor, params)
        total_s = time.perf_counter() - start
        cpu_s = time.process_time() - cpu_start

    track_frames = sum(len(t.frame_indices) for t in tracks)
    errors = [np.linalg.norm(f.joints[:: args.fps_factor][f.valid[:: args.fps_factor]]
                             - gt[f.track_id][f.valid[:: args.fps_factor]], axis=-1).mean()
              for f in out.fits]
    result = {
        "track_frames": track_frames,
        "fps_factor": args.fps_factor,
        "workers": args.workers,
        "seconds": round(total_s, 2),
        "cpu_seconds": round(cpu_s, 2),
        "load_average_1m": round(load, 2),
        "read_seconds": round(read_s, 2),
        "track_frames_per_s": round(track_frames / total_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_stage_mb": round(rss_before, 1),
        "mean_joint_error_mm_noisy": round(float(np.mean(errors)) * 1000, 1),
        "mean_joint_error_mm_raw": round(float(raw_error) * 1000, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
