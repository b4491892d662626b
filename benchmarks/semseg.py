"""Semseg: the light network against the heavy one on the same frames (docs/benchmarks.md).

Runs the stage's computation (`compute_semseg` with `frame_indices`: selective decoding, the
network, thresholding, RLE, writing) for DeepLabV3-ResNet101 (`deeplabv3`) and
DeepLabV3-MobileNetV3-Large (`deeplabv3-mobilenet`) on the same evenly spaced frames of a video
at the stage's working resolution (short side 520 by default), each model in a fresh process
(its own peak RSS), with the service's own configuration (NLFPIPE_DEVICE,
NLFPIPE_TORCH_THREADS). One frame is segmented first as a warm-up and not counted.

Weights: the real files when both are in the model cache (NLFPIPE_MODEL_CACHE, or
--model-cache), else random weights of the real architectures (speed only). With real
weights and a real video (--video) it also reports the agreement of the two networks' person
masks on those frames: IoU per frame (frames where neither finds a person count as 1).

    .venv/bin/python benchmarks/semseg.py [--frames 6] [--video PATH] [--model-cache DIR]

The last line printed is one JSON object.
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

MODELS = ("deeplabv3", "deeplabv3-mobilenet")


def load_segmenter(model: str, model_cache: Path | None, device: str):
    """The real weights from the model cache when present, else random weights; and which."""
    import torch

    from services.common.models import get_entry
    from services.semseg.deeplab import DeepLabPersonSegmenter, build_deeplabv3

    if model_cache is not None:
        weights = model_cache / model / get_entry(model).files[0].name
        if weights.is_file():
            return DeepLabPersonSegmenter.load(weights, device, model), "real"
    torch.manual_seed(0)
    return DeepLabPersonSegmenter(build_deeplabv3(model), device), "random"


def run_child(model: str, video: Path, indices: list[int], short_side: int,
              model_cache: Path | None, masks_out: Path) -> dict:
    from services.common.settings import load_settings, resolve_device
    from services.common.stagerun import StageRun
    from services.common.threads import apply_torch_threads
    from services.semseg.pipeline import SemsegParams, compute_semseg

    settings = load_settings()
    threads = apply_torch_threads(settings)
    device = resolve_device(settings)
    segmenter, weights = load_segmenter(model, model_cache, device)
    with tempfile.TemporaryDirectory() as tmp:
        warm = StageRun(Path(tmp), {"video": video}, {}, None, None)
        compute_semseg(warm, SemsegParams(short_side=short_side, frame_indices=(indices[0],)),
                       segmenter, "deeplabv3", model)
    with tempfile.TemporaryDirectory() as tmp:
        run = StageRun(Path(tmp), {"video": video}, {}, None, None)
        params = SemsegParams(short_side=short_side, batch_size=1, frame_indices=tuple(indices))
        start = time.perf_counter()
        outputs = compute_semseg(run, params, segmenter, "deeplabv3", model)
        seconds = time.perf_counter() - start
        outputs.files["masks"].path.replace(masks_out)
    return {
        "model": model,
        "weights": weights,
        "device": device,
        "torch_threads": threads,
        "frames": len(indices),
        "s_per_frame": round(seconds / len(indices), 3),
        "timings_s": {k: round(v, 3) for k, v in run.timings.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def mask_agreement(heavy: Path, light: Path, indices: list[int]) -> dict:
    """IoU of the two networks' person masks on each segmented frame."""
    from services.common.formats.masks import read_track_masks

    a, b = read_track_masks(heavy), read_track_masks(light)
    ious = []
    for i in indices:
        ma, mb = a.frame(i).get(0), b.frame(i).get(0)
        if ma is None and mb is None:
            ious.append(1.0)
            continue
        x = ma.to_array().astype(bool) if ma is not None else np.zeros((a.height, a.width), bool)
        y = mb.to_array().astype(bool) if mb is not None else np.zeros((b.height, b.width), bool)
        ious.append(float((x & y).sum() / (x | y).sum()))
    return {"iou_mean": round(float(np.mean(ious)), 4), "iou_min": round(float(np.min(ious)), 4),
            "iou_per_frame": [round(v, 4) for v in ious]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6, help="frames to segment per model")
    parser.add_argument("--video", type=Path, help="a video (default: a generated 640x360 one)")
    parser.add_argument("--model-cache", type=Path, default=None)
    parser.add_argument("--short-side", type=int, default=520)
    parser.add_argument("--child", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--indices", help=argparse.SUPPRESS)
    parser.add_argument("--masks-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_cache = args.model_cache
    if model_cache is None and os.environ.get("NLFPIPE_MODEL_CACHE"):
        model_cache = Path(os.environ["NLFPIPE_MODEL_CACHE"])
    if args.child:
        indices = [int(i) for i in args.indices.split(",")]
        print(json.dumps(run_child(args.child, args.video, indices, args.short_side, model_cache,
                                   args.masks_out)))
        return

    from services.common.frames import Video, working_shape
    from tests.support.videos import make_test_video

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video
        if video is None:
            video = Path(tmp) / "figures.mp4"
            make_test_video(video, seconds=10, width=640, height=360, fps=30, figures=2)
        info = Video(video)
        indices = np.linspace(0, info.num_frames - 1, args.frames).round().astype(int).tolist()
        results = {}
        for model in MODELS:
            command = [sys.executable, __file__, "--child", model, "--video", str(video),
                       "--indices", ",".join(map(str, indices)), "--short-side",
                       str(args.short_side), "--masks-out", str(Path(tmp) / f"{model}.zst")]
            if model_cache is not None:
                command += ["--model-cache", str(model_cache)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[model] = json.loads(out.strip().splitlines()[-1])
            print(f"{model}: {json.dumps(results[model])}", file=sys.stderr, flush=True)
        real = all(r["weights"] == "real" for r in results.values())
        agreement = (mask_agreement(Path(tmp) / "deeplabv3.zst",
                                    Path(tmp) / "deeplabv3-mobilenet.zst", indices)
                     if real else {"iou_mean": None, "iou_min": None})
    heavy, light = results["deeplabv3"], results["deeplabv3-mobilenet"]
    height, width = working_shape(info.height, info.width, args.short_side)
    print(json.dumps({
        "video": f"{info.width}x{info.height}, {info.num_frames} frames"
                 + ("" if args.video else " (generated)"),
        "working_resolution": f"{width}x{height}",
        "frames": len(indices),
        "weights": "real" if real else "random",
        "device": heavy["device"],
        "torch_threads": heavy["torch_threads"],
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "s_per_frame_resnet101": heavy["s_per_frame"],
        "s_per_frame_mobilenetv3": light["s_per_frame"],
        "speedup": round(heavy["s_per_frame"] / light["s_per_frame"], 2),
        "peak_rss_mb_resnet101": heavy["peak_rss_mb"],
        "peak_rss_mb_mobilenetv3": light["peak_rss_mb"],
        **{k: agreement[k] for k in ("iou_mean", "iou_min")},
    }))


if __name__ == "__main__":
    main()
