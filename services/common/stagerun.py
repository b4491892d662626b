"""Content-addressed, resumable stage runs: cache keys, manifests and atomic publication.

Outputs of a run live under `stages/<stage>/<cache key>/<name>`; the manifest
`stages/<stage>/<cache key>/manifest.json` is written last and is what makes them final.
"""

import contextlib
import hashlib
import importlib.metadata
import json
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from services.common.errors import Cancelled, PreconditionFailed
from services.common.store import ArtifactInfo, ArtifactStore, sha256_file

MANIFEST_FORMAT = "nlfpipe.manifest/1"
_VERSIONED_PACKAGES = (
    "nlfpipe",
    "numpy",
    "torch",
    "smplfitter",
    "rlemasklib",
    "bodycompress",
    "av",
)
_PROGRESS_INTERVAL_S = 0.1


class ArtifactRefLike(Protocol):
    uri: str
    sha256: str


@dataclass(frozen=True)
class Progress:
    """One progress event of a stage run."""

    done: int
    total: int = 0
    message: str = ""
    step: str = ""


@dataclass
class OutputFile:
    """A file produced by a stage, to be stored under the run's key."""

    path: Path
    media_type: str


@dataclass
class StageOutputs:
    """What a compute function returns."""

    files: dict[str, OutputFile]
    counts: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageResult:
    """The outcome of a stage call, cached or computed."""

    outputs: dict[str, ArtifactInfo]
    cache_hit: bool
    cache_key: str
    manifest: ArtifactInfo
    compute_seconds: float
    algorithm_version: str
    counts: dict[str, float]
    timings: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


class StageRun:
    """The context a compute function works in: inputs, scratch space, progress, cancellation."""

    def __init__(
        self,
        workdir: Path,
        inputs: dict[str, Path],
        params: dict[str, Any],
        on_progress: Callable[[Progress], None] | None,
        cancel: threading.Event | None,
    ):
        self.workdir = workdir
        self.inputs = inputs
        self.params = params
        self.timings: dict[str, float] = {}
        self._on_progress = on_progress
        self._cancel = cancel
        self._last_progress = 0.0

    def progress(self, done: int, total: int = 0, message: str = "", step: str = "") -> None:
        """Reports progress (rate-limited) and checks for cancellation."""
        self.check_cancelled()
        now = time.monotonic()
        final = total > 0 and done >= total
        if self._on_progress and (final or now - self._last_progress >= _PROGRESS_INTERVAL_S):
            self._last_progress = now
            self._on_progress(Progress(int(done), int(total), message, step))

    def check_cancelled(self) -> None:
        """Raises Cancelled when the caller has gone away."""
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("the call was cancelled")

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Times a named step into the run's timings."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def cache_key(stage: str, version: str, input_digests: Mapping[str, str], params: Mapping) -> str:
    """The content address of a stage run: stage, algorithm version, input digests, parameters."""
    payload = canonical_json(
        {"stage": stage, "version": version, "inputs": dict(input_digests), "params": dict(params)}
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def run_prefix(stage: str, key: str) -> str:
    return f"stages/{stage}/{key}"


def _package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def _cached_result(store: ArtifactStore, manifest_key: str) -> StageResult | None:
    manifest_info = store.stat(manifest_key)
    if manifest_info is None:
        return None
    manifest = json.loads(store.get_bytes(manifest_key))
    outputs = {name: ArtifactInfo(**o) for name, o in manifest["outputs"].items()}
    if any(not store.exists(o.key) for o in outputs.values()):
        return None
    return StageResult(
        outputs=outputs,
        cache_hit=True,
        cache_key=manifest["cache_key"],
        manifest=manifest_info,
        compute_seconds=0.0,
        algorithm_version=manifest["algorithm_version"],
        counts=manifest.get("counts", {}),
        timings={},
        extra=manifest.get("extra", {}),
    )


def _resolve_inputs(
    store: ArtifactStore, inputs: Mapping[str, ArtifactRefLike]
) -> dict[str, ArtifactInfo]:
    resolved = {}
    for name, ref in inputs.items():
        info = store.require(store.key_from_uri(ref.uri))
        if not info.sha256:
            info = replace(info, sha256=_hash_stored(store, info.key))
        if ref.sha256 and info.sha256 and ref.sha256 != info.sha256:
            raise PreconditionFailed(
                f"input {name!r} ({ref.uri}) has sha256 {info.sha256[:12]}..., "
                f"but the request expects {ref.sha256[:12]}...; the object changed or the "
                "reference is stale"
            )
        resolved[name] = info
    return resolved


def _hash_stored(store: ArtifactStore, key: str) -> str:
    """The sha256 of an object stored without one (e.g. uploaded by another S3 client)."""
    with tempfile.TemporaryDirectory(prefix="nlfpipe-hash-") as tmp:
        return sha256_file(store.get_file(key, Path(tmp, "object")))


def _fetch_inputs(
    store: ArtifactStore, inputs: Mapping[str, ArtifactInfo], workdir: Path
) -> dict[str, Path]:
    paths = {}
    for name, info in inputs.items():
        local = store.local_path(info.key)
        paths[name] = local or store.get_file(
            info.key, workdir / "inputs" / name / Path(info.key).name
        )
    return paths


def run_stage(
    store: ArtifactStore,
    *,
    stage: str,
    version: str,
    inputs: Mapping[str, ArtifactRefLike],
    params: Mapping[str, Any],
    compute: Callable[[StageRun], StageOutputs],
    force: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> StageResult:
    """Returns the cached result of this stage run, or computes, publishes and returns it."""
    resolved = _resolve_inputs(store, inputs)
    key = cache_key(stage, version, {n: i.sha256 for n, i in resolved.items()}, params)
    prefix = run_prefix(stage, key)
    manifest_key = f"{prefix}/manifest.json"
    if not force:
        cached = _cached_result(store, manifest_key)
        if cached is not None:
            if on_progress:
                on_progress(Progress(1, 1, "cache hit", "cache"))
            return cached

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"nlfpipe-{stage}-") as tmp:
        workdir = Path(tmp)
        run = StageRun(workdir, {}, dict(params), on_progress, cancel)
        with run.step("fetch_inputs"):
            run.inputs = _fetch_inputs(store, resolved, workdir)
        outputs = compute(run)
        run.check_cancelled()
        compute_seconds = time.perf_counter() - started
        with run.step("publish"):
            published = {
                name: store.put_file(f"{prefix}/{name}", out.path, out.media_type)
                for name, out in outputs.files.items()
            }
        manifest = {
            "format": MANIFEST_FORMAT,
            "stage": stage,
            "algorithm_version": version,
            "cache_key": key,
            "created_unix": time.time(),
            "inputs": {n: {"uri": i.uri, "sha256": i.sha256} for n, i in resolved.items()},
            "params": dict(params),
            "versions": _package_versions(),
            "outputs": {n: asdict(i) for n, i in published.items()},
            "counts": outputs.counts,
            "timings": run.timings,
            "compute_seconds": compute_seconds,
            "extra": outputs.extra,
        }
        manifest_path = workdir / "manifest.json"
        manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        manifest_info = store.put_file(manifest_key, manifest_path, "application/json")
        shutil.rmtree(workdir / "inputs", ignore_errors=True)
    return StageResult(
        outputs=published,
        cache_hit=False,
        cache_key=key,
        manifest=manifest_info,
        compute_seconds=compute_seconds,
        algorithm_version=version,
        counts=outputs.counts,
        timings=run.timings,
        extra=outputs.extra,
    )
