"""Fully cached re-runs of `nlfpipe run` that start nothing.

After a run completes, its summary is recorded under `<state dir>/runs/<key>.json`. The key
holds everything that shapes the results: the video's sha256, the options, for every stage
the models its service would compute with (`stack.service_models`: the test-models flag, the
selecting settings and the sha256 of each model file), the source of the pipeline's code, the
installed package versions and the visible GPUs. A later run with the same key whose outputs
are all still in the store is answered from the record: no service, no Prefect server, the
same results folder. Starting services costs 20-60 s on 2 cores even when every stage would
answer from its cache (docs/benchmarks.md); this answers in about a second. Anything else
(another option, model, file or code) goes through the services and their cache keys.
"""

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from orchestrator.stack import service_models
from orchestrator.summary import RunSummary

RECORD_FORMAT = "nlfpipe.run-record/1"
_CODE_PACKAGES = ("orchestrator", "services", "gen")
_CODE_SUFFIXES = (".py", ".yaml", ".yml", ".json")
_GPU_ENV = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")


def replay_key(
    params, stages: Iterable[str], env: Mapping[str, str], state_dir: Path
) -> str | None:
    """The record key of a run, or None when the run cannot be answered from a record (a
    forced run, or a video that is not a local file and may change at its source)."""
    if params.force or not Path(params.video).is_file():
        return None
    identity = {
        "format": RECORD_FORMAT,
        "video_sha256": _video_sha256(Path(params.video), Path(state_dir)),
        "options": params.model_dump(mode="json", exclude={"video", "force"}),
        "models": {stage: service_models(stage, env) for stage in stages},
        "code": _code_digest(),
        "packages": _package_versions(),
        "gpus": {
            "env": {k: env[k] for k in _GPU_ENV if k in env},
            "devices": sorted(p.name for p in Path("/dev").glob("nvidia[0-9]*")),
        },
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def record_run(state_dir: Path, key: str, summary: RunSummary) -> Path:
    """Writes the record of a completed run (atomically)."""
    folder = Path(state_dir) / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps({"format": RECORD_FORMAT, "summary": summary.model_dump()}))
    os.replace(partial, path)
    return path


def recorded_run(state_dir: Path, key: str, store) -> RunSummary | None:
    """The recorded summary of an identical run, as cache hits, when every output, manifest
    and the summary are still in the store with their recorded sizes; else None."""
    path = Path(state_dir) / "runs" / f"{key}.json"
    try:
        record = json.loads(path.read_text())
        summary = RunSummary.model_validate(record["summary"])
    except (OSError, ValueError, KeyError):
        return None
    if record.get("format") != RECORD_FORMAT or not _all_stored(summary, store):
        return None
    for stage in summary.stages:
        stage.cache_hit, stage.compute_seconds, stage.wall_seconds = True, 0.0, 0.0
        stage.attempts = 0
    summary.wall_seconds = 0.0
    return summary


def _all_stored(summary: RunSummary, store) -> bool:
    refs = [(ref.uri, ref.size_bytes) for s in summary.stages for ref in s.outputs.values()]
    refs += [(s.manifest_uri, None) for s in summary.stages]
    refs.append((summary.summary_uri, None))
    for uri, size in refs:
        if not uri:
            return False
        info = store.stat(store.key_from_uri(uri))
        if info is None or (size and info.size_bytes != size):
            return False
    return True


def _video_sha256(path: Path, state_dir: Path) -> str:
    """The video's sha256, remembered by absolute path, size and mtime under the state dir."""
    from services.common.store import sha256_file

    stat = path.stat()
    remembered = state_dir / "runs" / "video-hashes.json"
    marker = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        known = json.loads(remembered.read_text())
    except (OSError, ValueError):
        known = {}
    if marker not in known:
        known[marker] = sha256_file(path)
        remembered.parent.mkdir(parents=True, exist_ok=True)
        remembered.write_text(json.dumps(known))
    return known[marker]


def _code_digest() -> str:
    """sha256 over the pipeline's own source files (their paths and contents)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in _CODE_PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.suffix in _CODE_SUFFIXES and "__pycache__" not in path.parts:
                digest.update(path.relative_to(root).as_posix().encode() + b"\0")
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _package_versions() -> list[str]:
    return sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
