"""What the Prefect UI shows: browser links to stored objects, the candidates and the results.

A link is an `http(s)` URL a browser can open: a presigned URL for S3, or the local stack's
store HTTP server (`NLFPIPE_STORE_HTTP_URL`, see orchestrator/store_http.py) for the local
folder store. Without either there is no link, and the text says where the object is.
"""

import json
import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

from services.common.store import ArtifactStore, LocalFolderStore, S3Store

STORE_HTTP_ENV = "NLFPIPE_STORE_HTTP_URL"
S3_PUBLIC_ENDPOINT_ENV = "NLFPIPE_S3_PUBLIC_ENDPOINT"
LINK_EXPIRY_S = 7 * 24 * 3600
RESULTS_PREFIX = "results"


def browser_link(store: ArtifactStore, uri: str, file_name: str = "") -> str | None:
    """An http(s) URL of a stored object, or None when this store cannot be reached by a browser.

    `file_name` is the name the browser shows and saves the object under.
    """
    key = store.key_from_uri(uri)
    if isinstance(store, S3Store):
        extra = (
            {"response-content-disposition": f'inline; filename="{file_name}"'}
            if file_name
            else None
        )
        try:
            return _signing_client(store).presigned_get_object(
                store.bucket, key, expires=timedelta(seconds=LINK_EXPIRY_S),
                response_headers=extra,
            )  # fmt: skip
        except Exception:  # noqa: BLE001 - a missing link only costs a click
            return None
    base = os.environ.get(STORE_HTTP_ENV, "").rstrip("/")
    if isinstance(store, LocalFolderStore) and base:
        named = file_name and file_name != key.rpartition("/")[2]
        query = f"?name={quote(file_name)}" if named else ""
        return f"{base}/{quote(key)}{query}"
    return None


def _signing_client(store: S3Store):
    """The client that signs browser links: the store's own, or one for the S3 endpoint as a
    browser reaches it (`NLFPIPE_S3_PUBLIC_ENDPOINT`; signing needs no request to it)."""
    public = os.environ.get(S3_PUBLIC_ENDPOINT_ENV, "").strip()
    if not public:
        return store.client
    from minio import Minio

    from services.common.settings import load_settings

    settings = load_settings()
    return Minio(
        public, access_key=settings.s3_access_key, secret_key=settings.s3_secret_key,
        secure=settings.s3_secure, region=settings.s3_region or "us-east-1",
    )  # fmt: skip


def candidates_markdown(candidates: dict, image_link: str | None, error: str = "") -> str:
    """The Resume dialog's text: the numbered preview, a table of candidates, how to answer."""
    rows = candidates.get("candidates", [])
    lines = []
    if error:
        lines += [f"**{error}**", ""]
    lines += [
        f"## Choose the people to track ({len(rows)} candidates)",
        "",
        f"Frame {candidates.get('init_frame', '?')} "
        f"({float(candidates.get('init_time_seconds', 0.0)):.2f} s into the video). Type the "
        "numbers of the people to track below, e.g. `0` and `2`; leave the list empty to track "
        "everyone. Each track keeps its colour in every later picture.",
        "",
    ]
    if image_link:
        lines += [f"![Candidates on the init frame]({image_link})", ""]
    if rows:
        lines += [
            "| number | score | box (x, y, width, height) | size (px) |",
            "|---:|---:|---|---:|",
        ]
        for c in rows:
            x, y, w, h = (round(v) for v in c.get("box_xywh", (0, 0, 0, 0)))
            lines.append(
                f"| {c['index']} | {float(c.get('score', 0.0)):.2f} | {x}, {y}, {w}, {h} | "
                f"{int(c.get('area_px', 0))} |"
            )
    else:
        lines.append("No people were found on this frame; resume to stop the run.")
    return "\n".join(lines)


def read_candidates(store: ArtifactStore, uri: str) -> dict:
    """The candidates JSON (format nlfpipe.candidates/1) of the tracking preview."""
    return json.loads(store.get_bytes(store.key_from_uri(uri)))


def results_prefix(folder_name: str) -> str:
    """Store prefix of a UI run's results, named like `nlfpipe run`'s results folder."""
    return f"{RESULTS_PREFIX}/{folder_name}"


def copy_into_results(store: ArtifactStore, uri: str, prefix: str, file_name: str,
                      media_type: str) -> str:  # fmt: skip
    """Copies a stored object to `<prefix>/<file_name>` (skipped when identical); its URI."""
    import tempfile

    key = store.key_from_uri(uri)
    target = f"{prefix}/{file_name}"
    source_info, target_info = store.stat(key), store.stat(target)
    if source_info and target_info and source_info.sha256 == target_info.sha256:
        return target_info.uri
    local = store.local_path(key)
    if local is not None:
        return store.put_file(target, local, media_type).uri
    with tempfile.TemporaryDirectory(prefix="nlfpipe-results-") as tmp:
        path = store.get_file(key, Path(tmp) / file_name)
        return store.put_file(target, path, media_type).uri


def results_markdown(rows: list[dict]) -> str:
    """A table of the run's outputs; each row: label, file (name), link (or None), size_bytes."""
    lines = ["## Results", "", "| output | file | size |", "|---|---|---:|"]
    for row in rows:
        name = row["file"]
        cell = f"[{name}]({row['link']})" if row.get("link") else f"`{name}`"
        lines.append(f"| {row['label']} | {cell} | {human_size(row['size_bytes'])} |")
    if rows and not any(r.get("link") for r in rows):
        lines += ["", "No browser links: the store is neither S3 nor served over HTTP "
                  "(`nlfpipe stack up` serves the local store)."]  # fmt: skip
    return "\n".join(lines)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


#: Human labels of outputs (`stage.output`); others are labelled from their names.
OUTPUT_LABELS = {
    "ingest.video": "Ingested video (constant frame rate, H.264)",
    "ingest.probe": "Video facts (frames, fps, size)",
    "tracking.masks": "Person masks per track",
    "tracking.candidates_preview": "Candidates on the init frame",
    "tracking.candidates": "Candidates (scores, boxes)",
    "tracking.tracks": "Tracks (summary)",
    "semseg.masks": "Person masks for SLAM",
    "slam.cameras": "Cameras per frame",
    "slam.preview": "Camera trajectory (top view)",
    "pose.predictions": "3D pose predictions",
    "fitting.fits": "SMPL fits per track",
    "fitting.preview": "Fitting preview",
    "interpolation.video": "Video at twice the frame rate",
    "render.camera_view": "Camera-view video of the meshes",
    "render.world_view": "World-view video of the meshes",
}


def output_label(name: str) -> str:
    """A readable label of `stage.output` (e.g. `render.exports_scene.glb` -> its file)."""
    if name in OUTPUT_LABELS:
        return OUTPUT_LABELS[name]
    stage, _, output = name.partition(".")
    return f"{stage}: {output.replace('_', ' ')}"
