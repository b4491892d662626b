"""Ingest benchmark: store throughput (S3 on a local moto server, and the folder backend) and
ingest wall time without a cut (stream copy) and with a 20 s cut (re-encode).

Run: .venv/bin/python benchmarks/ingest.py   (last line: one JSON object)
"""

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.common.store import ArtifactStore, LocalFolderStore, S3Store  # noqa: E402
from services.ingest.stage import make_request, run_ingest  # noqa: E402
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, moto_server  # noqa: E402

SECONDS, WIDTH, HEIGHT, FPS = 60, 1280, 720, 30
CUT = "00:20-00:40"
REPEATS = 3


def make_source(path: Path) -> None:
    """ffmpeg's moving test pattern with a tone: H.264 yuv420p + AAC, about 20 MB."""
    size = f"{WIDTH}x{HEIGHT}"
    subprocess.run(
        [
            *(imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y"),
            *("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS}"),
            *("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"),
            *("-t", str(SECONDS), "-c:v", "libx264", "-preset", "veryfast", "-crf", "20"),
            *("-pix_fmt", "yuv420p", "-c:a", "aac", str(path)),
        ],
        check=True,
    )


def _median_seconds(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def store_throughput(store: ArtifactStore, video: Path, workdir: Path) -> tuple[float, float]:
    """(put MB/s, get MB/s) of the video file through a store."""
    megabytes = video.stat().st_size / 1e6
    counter = iter(range(1000))
    put_s = _median_seconds(
        lambda: store.put_file(f"bench/{next(counter)}.mp4", video, "video/mp4")
    )
    get_s = _median_seconds(lambda: store.get_file("bench/0.mp4", workdir / "got.mp4"))
    return megabytes / put_s, megabytes / get_s


def ingest_fps(store: ArtifactStore, video: Path, time_range: str, repeats: int) -> float:
    """Output frames per wall-clock second of a full (forced, uncached) ingest call."""
    request = make_request(str(video), time_range, 0, force=True)
    frames = run_ingest(store, request).probe.frame_count
    return frames / _median_seconds(lambda: run_ingest(store, request), repeats)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        video = workdir / "source.mp4"
        start = time.perf_counter()
        make_source(video)
        print(
            f"test video: {SECONDS} s {WIDTH}x{HEIGHT} {FPS} fps, "
            f"{video.stat().st_size / 1e6:.1f} MB, made in {time.perf_counter() - start:.1f} s"
        )
        results = {}
        with moto_server() as endpoint:
            s3 = S3Store(endpoint, ACCESS_KEY, SECRET_KEY, "bench")
            s3.ensure_bucket()
            results["s3_put_mb_s"], results["s3_get_mb_s"] = store_throughput(s3, video, workdir)
            results["s3_ingest_passthrough_fps"] = ingest_fps(s3, video, "", REPEATS)
        folder = LocalFolderStore(workdir / "store")
        results["folder_put_mb_s"], results["folder_get_mb_s"] = store_throughput(
            folder, video, workdir
        )
        results["ingest_passthrough_fps"] = ingest_fps(folder, video, "", REPEATS)
        results["ingest_cut_fps"] = ingest_fps(folder, video, CUT, 1)
        for name, value in results.items():
            print(f"{name}: {value:.1f}")
        print(json.dumps({k: round(v, 1) for k, v in results.items()}))


if __name__ == "__main__":
    main()
