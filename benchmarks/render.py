"""Render stage benchmark: 3 synthetic people walking, 30 fps, 1280x720, the fitting stage's
outputs and a matching video with audio; each measurement in a fresh process (its own peak RSS).

  camera view alone, 10 s  -> camera_view_frames_per_s (decode, SMPL, draw, blend, encode, mux)
  world view alone, 10 s   -> world_view_frames_per_s
  both views, 10 s and 40 s -> peak_rss_mb, peak_rss_mb_long (flat: memory does not grow with
                               the video)
  exports of the 10 s fits -> export_s (GLB, BVH and npz)

CPU numbers use Mesa's EGL (llvmpipe) even where an NVIDIA driver is installed; with one (and a
CUDA GPU) the two single-view runs are repeated on NVIDIA's EGL, else that part is skipped.

Usage: .venv/bin/python benchmarks/render.py [--seconds 10] [--long-seconds 40]
The last printed line is one JSON object (with the 1-minute load average: the machine may be
shared; the CPU milliseconds per frame, of every thread of the process, do not depend on it).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WIDTH, HEIGHT, FPS, PEOPLE = 1280, 720, 30.0, 3
EGL_VENDORS = Path("/usr/share/glvnd/egl_vendor.d")
MESA_EGL = EGL_VENDORS / "50_mesa.json"
NVIDIA_EGL = EGL_VENDORS / "10_nvidia.json"


def _inputs(folder: Path, seconds: float):
    from smplfitter.pt import BodyModel

    from services.fitting.synthetic_body_model import write_synthetic_smpl
    from tests.support.render_inputs import write_render_inputs

    root = folder / "models"
    if not (root / "smpl").exists():
        write_synthetic_smpl(root, genders=("neutral",))
    body = BodyModel("smpl", "neutral", model_root=str(root / "smpl"))
    case = folder / f"{seconds:g}s"
    if not (case / "video.mp4").exists():
        write_render_inputs(
            case,
            body,
            num_frames=round(seconds * FPS),
            width=WIDTH,
            height=HEIGHT,
            fps=FPS,
            num_people=PEOPLE,
            audio=True,
            seed=5,
        )
    return body, case, root / "smpl"


def child(folder: Path, seconds: float, views: list[str], exports: bool) -> dict:
    """One measurement in this process (its peak RSS is this measurement's)."""
    import torch

    from services.render.bodies import BodyMeshes
    from services.render.gl import renderer_info
    from services.render.pipeline import RenderSettings, load_inputs, render
    from services.render.service import TORCH_THREADS

    torch.set_num_threads(TORCH_THREADS)  # as the service does

    body, case, smpl_dir = _inputs(folder, seconds)
    inputs = load_inputs(
        case / "video.mp4",
        case / "fits.npz",
        case / "ground.json",
        case / "display_cameras.npz",
        case / "viewer_cameras.npz",
        1,
    )
    out_dir = folder / "out"
    out_dir.mkdir(exist_ok=True)
    result = {"renderer": renderer_info().identity, "frames": inputs.num_frames}
    start, cpu = time.perf_counter(), time.process_time()
    render(
        inputs,
        BodyMeshes(body),
        RenderSettings(views=tuple(views)),
        out_dir,
        lambda *_: None,
        lambda: None,
    )
    wall = time.perf_counter() - start
    result.update(
        seconds=round(wall, 2),
        frames_per_s=round(inputs.num_frames / wall, 2),
        cpu_seconds=round(time.process_time() - cpu, 2),
    )
    if exports:
        from services.render.exports import write_exports

        start = time.perf_counter()
        write_exports(
            fits=case / "fits.npz",
            ground=case / "ground.json",
            display_cameras=case / "display_cameras.npz",
            body_model_dir=smpl_dir,
            gender="neutral",
            out_dir=out_dir / "exports",
        )
        result["export_s"] = round(time.perf_counter() - start, 2)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["peak_rss_mb"] = round(
        max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, children) / 1024, 1
    )
    return result


def _run(
    folder: Path, seconds: float, views: list[str], vendor: Path | None, exports: bool = False
) -> dict:
    env = {**os.environ}
    if vendor is not None and vendor.exists():
        env["__EGL_VENDOR_LIBRARY_FILENAMES"] = str(vendor)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(folder),
        "--seconds",
        str(seconds),
        "--views",
        ",".join(views),
    ] + (["--exports"] if exports else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _nvidia_available() -> str | None:
    """None when an NVIDIA EGL path can be measured, else why not."""
    if not NVIDIA_EGL.exists():
        return f"no NVIDIA EGL driver ({NVIDIA_EGL} is missing)"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU"
    except ImportError:
        return "torch is not installed"
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--long-seconds", type=float, default=40.0)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--views", default="camera,world", help=argparse.SUPPRESS)
    parser.add_argument("--exports", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.seconds, args.views.split(","), args.exports)))
        return

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="render-bench-") as tmp:
        folder = Path(tmp)
        camera = _run(folder, args.seconds, ["camera"], MESA_EGL)
        print(f"camera view {args.seconds:g} s: {camera}", flush=True)
        world = _run(folder, args.seconds, ["world"], MESA_EGL)
        print(f"world view {args.seconds:g} s: {world}", flush=True)
        both = _run(folder, args.seconds, ["camera", "world"], MESA_EGL, exports=True)
        print(f"both views {args.seconds:g} s: {both}", flush=True)
        long = _run(folder, args.long_seconds, ["camera", "world"], MESA_EGL)
        print(f"both views {args.long_seconds:g} s: {long}", flush=True)
        why_not = _nvidia_available()
        nvidia = {}
        if why_not is None:
            for view in ("camera", "world"):
                nvidia[view] = _run(folder, args.seconds, [view], NVIDIA_EGL)
                print(f"NVIDIA EGL, {view} view: {nvidia[view]}", flush=True)
        else:
            print(f"NVIDIA EGL path skipped: {why_not}", flush=True)
    result = {
        "resolution": f"{WIDTH}x{HEIGHT}",
        "fps": FPS,
        "people": PEOPLE,
        "seconds": args.seconds,
        "renderer": camera["renderer"],
        "camera_view_frames_per_s": camera["frames_per_s"],
        "world_view_frames_per_s": world["frames_per_s"],
        "both_views_frames_per_s": both["frames_per_s"],
        "camera_view_cpu_ms_per_frame": round(1000 * camera["cpu_seconds"] / camera["frames"], 1),
        "world_view_cpu_ms_per_frame": round(1000 * world["cpu_seconds"] / world["frames"], 1),
        "peak_rss_mb": both["peak_rss_mb"],
        "peak_rss_mb_long": long["peak_rss_mb"],
        "long_seconds": args.long_seconds,
        "export_s": both.get("export_s"),
        "nvidia_camera_view_frames_per_s": nvidia.get("camera", {}).get("frames_per_s"),
        "nvidia_world_view_frames_per_s": nvidia.get("world", {}).get("frames_per_s"),
        "nvidia_skipped": why_not,
        "cpu_count": os.cpu_count(),
        "load_average_1m_before": round(load_before, 2),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
