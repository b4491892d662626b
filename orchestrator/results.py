"""The results folder of a run: its name, the file names of the outputs, and the export.

Each run has its own folder, `<video stem>-<digest of the video and the options>`, under the
results root (`nlfpipe-results/`), and `latest` links to the last one. The export copies the
outputs into a hidden sibling folder and renames it into place, so a folder under its final
name is always complete.
"""

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_ROOT = Path("nlfpipe-results")
LATEST = "latest"
DIGEST_CHARS = 8
#: Options that do not change what a run produces (force recomputes the same results).
_NOT_IN_DIGEST = frozenset({"video", "force"})

_SUFFIXES = {
    "video/mp4": ".mp4",
    "application/json": ".json",
    "image/png": ".png",
    "image/gif": ".gif",
    "application/x-bodycompress": ".bcz",
    "application/x-nlfpipe-masks+jsonl+zstd": ".jsonl.zst",
}


def result_file_name(stage: str, output: str, media_type: str) -> str:
    """`<stage>-<output><suffix>`, the suffix from the media type (`+npz` -> .npz); outputs
    named after their file (render's `exports_scene.glb`) keep their name."""
    if "." in output:
        return f"{stage}-{output}"
    suffix = _SUFFIXES.get(media_type) or (
        "." + media_type.rsplit("+", 1)[1] if "+" in media_type else ".bin"
    )
    return f"{stage}-{output}{suffix}"


def run_folder_name(video: str, params: Any) -> str:
    """`<video stem>-<8 hex digits>`: the digest covers the video (a local file by its absolute
    path) and every option that shapes the results, so another option or another file of the
    same name gets another folder, and the same run the same one."""
    options = _as_dict(params)
    source = str(Path(video).resolve()) if Path(video).is_file() else video
    payload = {
        "video": source,
        "options": {k: v for k, v in options.items() if k not in _NOT_IN_DIGEST},
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(video.rstrip("/")).stem).strip("._") or "video"
    return f"{stem[:60]}-{digest}"


def _as_dict(params: Any) -> dict:
    if hasattr(params, "model_dump"):
        return params.model_dump(mode="json")
    if isinstance(params, Mapping):
        return dict(params)
    raise TypeError(f"parameters must be a mapping or a pydantic model, got {type(params)}")


def export_results(
    summary, folder: Path, store=None, extra: Mapping[str, Any] | None = None
) -> Path:
    """Copies every output of the run from `store` (default: the flow's) into `folder` (see
    result_file_name) with `summary.json` (the run summary plus `extra`), replacing an earlier
    export of the same run."""
    if store is None:
        from orchestrator.stage_tasks import flow_store

        store = flow_store()
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        for stage in summary.stages:
            for name, ref in stage.outputs.items():
                target = partial / result_file_name(stage.stage, name, ref.media_type)
                _export(store, ref.uri, target)
        record = (
            json.loads(store.get_bytes(store.key_from_uri(summary.summary_uri)))
            if (summary.summary_uri)
            else summary.model_dump(mode="json")
        )
        record.update(extra or {})
        (partial / "summary.json").write_text(json.dumps(record, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def _export(store, uri: str, target: Path) -> None:
    key = store.key_from_uri(uri)
    local = store.local_path(key)
    if local is not None:
        shutil.copyfile(local, target)
    else:
        store.get_file(key, target)


def link_latest(folder: Path) -> Path:
    """Points `<folder's parent>/latest` at `folder` (replacing the link atomically)."""
    folder = Path(folder)
    link = folder.parent / LATEST
    temporary = folder.parent / f".{LATEST}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(folder.name, target_is_directory=True)
    os.replace(temporary, link)
    return link
