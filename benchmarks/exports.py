"""Exports benchmark: glTF binary + BVH + world npz of a synthetic scene (default 10 s at 30 fps,
3 people, every frame valid), with the synthetic SMPL-format body model.

Usage: .venv/bin/python benchmarks/exports.py [--seconds 10] [--people 3] [--repeats 3]
Prints the median wall seconds of `write_exports` (all formats) and of each format alone, the
file sizes, and the 1-minute load average (the machine may be shared); the last line is one JSON
object.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.common.formats.fits import TrackFits, save_fits  # noqa: E402
from services.common.formats.ground import save_ground  # noqa: E402
from services.fitting.synthetic_body_model import write_synthetic_smpl  # noqa: E402
from services.render.exports import FORMATS, write_exports  # noqa: E402
from tests.support.scenes import make_scene  # noqa: E402


def timed(repeats: int, **kwargs) -> tuple[float, dict[str, Path]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = write_exports(**kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--people", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    fps = 30.0
    n = int(args.seconds * fps)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = write_synthetic_smpl(tmp / "models", genders=("neutral",)) / "smpl"
        from smplfitter.pt import BodyModel

        scene = make_scene(
            BodyModel("smpl", "neutral", model_root=str(model_dir)),
            num_frames=n,
            num_people=args.people,
            seed=5,
        )
        tracks = [
            TrackFits(
                p.track_id,
                p.pose.astype(np.float32),
                p.trans.astype(np.float32),
                p.betas[None].astype(np.float32),
                np.array([[0, n]]),
                np.ones(n, np.float32),
                np.ones(n, bool),
            )
            for p in scene.people
        ]
        meta = {
            "fps": fps,
            "fps_factor": 1,
            "num_frames": n,
            "body_model": "smpl",
            "gender": "neutral",
        }
        save_fits(tmp / "fits.npz", tracks, meta)
        save_ground(tmp / "ground.json", scene.up, scene.ground_height_mm, 100, 100, True)
        scene.cameras.save(tmp / "cameras.npz")
        common = dict(
            fits=tmp / "fits.npz",
            ground=tmp / "ground.json",
            display_cameras=tmp / "cameras.npz",
            body_model_dir=model_dir,
            gender="neutral",
        )

        load = os.getloadavg()[0]
        export_s, out = timed(args.repeats, **common, out_dir=tmp / "all")
        per_format = {
            f"{fmt}_s": round(
                timed(args.repeats, **common, out_dir=tmp / fmt, formats=(fmt,))[0], 3
            )
            for fmt in FORMATS
        }
        sizes = {name: path.stat().st_size for name, path in out.items()}
        result = {
            "seconds": args.seconds,
            "fps": fps,
            "people": args.people,
            "export_s": round(export_s, 3),
            **per_format,
            "glb_mb": round(sizes["scene.glb"] / 1e6, 2),
            "bvh_mb_per_track": round(
                np.mean([v for k, v in sizes.items() if k.endswith(".bvh")]) / 1e6, 3
            ),
            "npz_mb": round(sizes["world.npz"] / 1e6, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "load_1min": round(load, 2),
        }
        print(
            f"write_exports, {args.seconds:g} s at {fps:g} fps, {args.people} people: "
            f"{export_s:.3f} s (median of {args.repeats}); load {load:.2f}"
        )
        print(json.dumps(result))


if __name__ == "__main__":
    main()
