"""Fitting stage benchmark: a synthetic 30 s clip at 30 fps with 3 people (2700 track-frames),
noisy predictions read from a predictions file, the whole stage in-process on the CPU (timed).

Accuracy beside it (not timed): the same clip with a noise level that swings between x0.6 and
x1.6 every 4 s (`*_varying`), and the clean clip's acceleration error with the robust local
quadratic point fit and with the kernel-weighted mean it replaced.

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

from services.fitting.pipeline import FittingParams, TrackInput, run_fitting  # noqa: E402
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

NOISY = Noise(point_sigma_mm=30, outlier_fraction=0.05, outlier_mm=500, scale_jitter=0.1)
VARYING = Noise(
    point_sigma_mm=30, outlier_fraction=0.05, outlier_mm=500, scale_jitter=0.1,
    level_range=(0.6, 1.6), level_period_s=4.0,
)  # fmt: skip


def joint_errors_mm(fits, gt, fps_factor: int) -> tuple[float, float]:
    """(mean joint error, mean acceleration error per frame^2) of the fits in mm."""
    errors, accels = [], []
    for f in fits:
        joints = f.joints[::fps_factor]
        ok = f.valid[::fps_factor]
        true = gt[f.track_id]
        errors.append(np.linalg.norm(joints[ok] - true[ok], axis=-1).mean())
        second = lambda a: a[2:] - 2 * a[1:-1] + a[:-2]  # noqa: E731
        accels.append(np.nanmean(np.linalg.norm(second(joints) - second(true), axis=-1)))
    return float(np.mean(errors)) * 1000, float(np.mean(accels)) * 1000


def raw_error_mm(preds, gt) -> float:
    return float(np.mean([np.linalg.norm(preds[k]["joints"] / 1000 - gt[k], axis=-1).mean()
                          for k in gt])) * 1000  # fmt: skip


def accuracy_only(smpl, scene, noise, params) -> tuple[float, float, float]:
    """(joint error, acceleration error, raw joint error) in mm of one untimed in-memory run."""
    gt = {p.track_id: truth(smpl.body_model, p)["joints"] for p in scene.people}
    preds = {p.track_id: predictions_for(smpl.body_model, scene, p, noise, p.track_id)
             for p in scene.people}  # fmt: skip
    sub = smpl.vertex_subset
    tracks = [
        TrackInput(k, p["frame_indices"],
                   np.concatenate([p["vertices"][:, sub], p["joints"]], 1) / 1000,
                   np.concatenate([p["vertex_uncertainties"][:, sub],
                                   p["joint_uncertainties"]], 1))
        for k, p in preds.items()
    ]  # fmt: skip
    out = run_fitting(tracks, scene.cameras, smpl, scene.fps, 1, params)
    return (*joint_errors_mm(out.fits, gt, 1), raw_error_mm(preds, gt))


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
        preds = {p.track_id: predictions_for(smpl.body_model, scene, p, NOISY, p.track_id)
                 for p in scene.people}
        write_predictions(tmp / "preds.bcz", scene.cameras, preds, n)
        gt = {p.track_id: truth(smpl.body_model, p)["joints"] for p in scene.people}
        raw_error = raw_error_mm(preds, gt)
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

    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the checks
    track_frames = sum(len(t.frame_indices) for t in tracks)
    error, _ = joint_errors_mm(out.fits, gt, args.fps_factor)
    del tracks, out
    varying, _, varying_raw = accuracy_only(smpl, scene, VARYING, params)
    clean_scene = make_scene(smpl.body_model, num_frames=int(10 * fps), num_people=3, seed=7)
    _, accel_quadratic, _ = accuracy_only(smpl, clean_scene, Noise(), params)
    mean_params = FittingParams(workers=args.workers, point_fit="mean")
    _, accel_mean, _ = accuracy_only(smpl, clean_scene, Noise(), mean_params)
    result = {
        "track_frames": track_frames,
        "fps_factor": args.fps_factor,
        "workers": args.workers,
        "seconds": round(total_s, 2),
        "cpu_seconds": round(cpu_s, 2),
        "load_average_1m": round(load, 2),
        "read_seconds": round(read_s, 2),
        "track_frames_per_s": round(track_frames / total_s, 1),
        "peak_rss_mb": round(peak_rss, 1),
        "rss_before_stage_mb": round(rss_before, 1),
        "mean_joint_error_mm_noisy": round(error, 1),
        "mean_joint_error_mm_raw": round(raw_error, 1),
        "mean_joint_error_mm_varying": round(varying, 1),
        "mean_joint_error_mm_varying_raw": round(varying_raw, 1),
        "clean_accel_error_mm_per_frame2_quadratic": round(accel_quadratic, 3),
        "clean_accel_error_mm_per_frame2_mean": round(accel_mean, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
