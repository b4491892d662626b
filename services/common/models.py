"""The model registry and cache: which weight files exist, how to fetch and check them.

See docs/models.md. Layout of the cache: ``<settings.model_cache>/<model name>/<file name>``.
A download goes to ``<file>.part`` (resumed with an HTTP Range request after a cut
connection) and is moved to its final name only once its size and sha256 check out. Services
call ``require_model`` in ``load()``; it never downloads from the web and raises
``ModelNotReady`` with the command that fixes it. Hashes are cached beside each file
(``.<file>.sha256.json``, keyed by size and mtime) so that a check on load does not re-read
gigabytes.

The cache can also be kept in the artifact store (``models/<name>/<file>``, pushed by
``nlfpipe models fetch NAME --to-store``): with ``NLFPIPE_MODEL_SOURCE=store``,
``require_model`` first copies the files missing from the local cache out of the store.
"""

import hashlib
import http.client
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml
from minio.error import MinioException
from urllib3.exceptions import HTTPError as Urllib3Error

from services.common.errors import ModelNotReady
from services.common.settings import Settings
from services.common.store import ArtifactInfo, ArtifactStore, open_store, sha256_file

REGISTRY_PATH = Path(__file__).with_name("model_registry.yaml")
STORE_PREFIX = "models"
STORE_ERRORS = (OSError, MinioException, Urllib3Error)  # a store or cache access failed
_CHUNK = 1024 * 1024
log = logging.getLogger(__name__)


class ModelFetchError(RuntimeError):
    """A download failed or produced a file that does not match the registry."""


@dataclass(frozen=True)
class ModelFile:
    """One file of a model entry."""

    name: str
    url: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    size_bytes: int | None = None
    extract: tuple[str, ...] = ()
    optional: bool = False
    notes: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """A model of the registry: its files, licence and how to obtain it."""

    name: str
    description: str
    license: str
    files: tuple[ModelFile, ...]
    used_by: tuple[str, ...] = ()
    license_url: str = ""
    registration: str | None = None
    instructions: str = ""

    @property
    def manual(self) -> bool:
        """True when the licence requires a registration: nlfpipe never downloads these."""
        return self.registration is not None

    def required_paths(self) -> list[str]:
        """Paths (relative to the model folder) that must exist for the model to be usable."""
        paths: list[str] = []
        for f in self.files:
            if f.optional:
                continue
            paths.extend(f.extract if f.extract else [f.name])
        return paths


@cache
def load_registry(path: Path = REGISTRY_PATH) -> dict[str, ModelEntry]:
    """Reads the registry file into entries by name."""
    raw = yaml.safe_load(Path(path).read_text())
    entries = {}
    for name, spec in raw["models"].items():
        files = tuple(
            ModelFile(
                name=f["name"],
                url=f.get("url"),
                sha256=f.get("sha256"),
                sha256_prefix=f.get("sha256_prefix"),
                size_bytes=f.get("size_bytes"),
                extract=tuple(f.get("extract") or ()),
                optional=bool(f.get("optional", False)),
                notes=(f.get("notes") or "").strip(),
            )
            for f in spec["files"]
        )
        entries[name] = ModelEntry(
            name=name,
            description=spec["description"],
            license=spec["license"].strip(),
            files=files,
            used_by=tuple(spec.get("used_by") or ()),
            license_url=spec.get("license_url", ""),
            registration=spec.get("registration"),
            instructions=(spec.get("instructions") or "").strip(),
        )
    return entries


def get_entry(name: str) -> ModelEntry:
    """The registry entry ``name``; KeyError lists the known names."""
    registry = load_registry()
    if name not in registry:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(registry))}")
    return registry[name]


def model_dir(name: str, settings: Settings) -> Path:
    """The cache folder of a model (whether or not it is there)."""
    get_entry(name)
    return settings.model_cache / name


def model_path(name: str, settings: Settings) -> Path:
    """What a service opens: the file of a one-file model, else the model's folder."""
    entry = get_entry(name)
    folder = settings.model_cache / name
    if len(entry.files) == 1 and not entry.files[0].extract:
        return folder / entry.files[0].name
    return folder


def cli_program() -> str:
    """How to type the `nlfpipe` command from here: `.venv/bin/nlfpipe` when it is not on PATH."""
    program = Path(sys.executable).with_name("nlfpipe")
    on_path = shutil.which("nlfpipe")
    if on_path and Path(on_path).resolve() == program.resolve():
        return "nlfpipe"
    if not program.exists():
        return "nlfpipe"
    try:
        return str(program.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(program.absolute())


def fetch_command(*names: str) -> str:
    return f"{cli_program()} models fetch {' '.join(names)}"


def push_command(name: str) -> str:
    """The command that fills the store's copy of a model (fetching it first when needed)."""
    return f"{cli_program()} models fetch {name} --to-store"


def _how_to_get(entry: ModelEntry, settings: Settings) -> str:
    if entry.manual:
        files = ", ".join(f.name + (" (optional)" if f.optional else "") for f in entry.files)
        instructions = entry.instructions.replace("`nlfpipe ", f"`{cli_program()} ")
        return f"{instructions} The files: {files} (licence: {entry.registration})"
    return f"Run `{fetch_command(entry.name)}` (with NLFPIPE_MODEL_CACHE={settings.model_cache})"


def _not_ready(entry: ModelEntry, settings: Settings, problem: str) -> ModelNotReady:
    return ModelNotReady(
        f"model {entry.name!r} is not ready: {problem}. {_how_to_get(entry, settings)}"
    )


def model_problems(name: str, settings: Settings) -> list[str]:
    """Every missing or corrupt file of a model in the local cache (empty: it is usable)."""
    entry = get_entry(name)
    folder = settings.model_cache / name
    problems = [
        f"file {rel!r} is missing (expected at {folder / rel})"
        for rel in entry.required_paths()
        if not (folder / rel).is_file()
    ]
    problems += (
        [
            f"optional file {f.name!r} is missing (expected at {folder / f.name})"
            for f in entry.files
            if f.optional and not f.extract and not (folder / f.name).is_file()
        ]
        if problems
        else []
    )
    for f in entry.files:
        path = folder / f.name
        if f.extract or not path.is_file():
            continue
        if problem := check_file(path, f, use_cache=True):
            problems.append(f"{path} is corrupt: {problem}")
    return problems


def require_model(name: str, settings: Settings) -> Path:
    """Checks that a model is in the cache and intact, and returns ``model_path(name)``.

    Raises ``ModelNotReady`` naming every missing or corrupt file, its expected path and the
    command that gets it. Never downloads from the internet; with
    ``settings.model_source == "store"`` it first copies files missing from the local cache
    out of the artifact store (``pull_model``). The sha256 (where the registry pins one) is
    read from the hash cache when the file's size and mtime are unchanged.
    """
    return require_models([name], settings)[0]


def require_models(names: Iterable[str], settings: Settings) -> list[Path]:
    """`require_model` for several models at once: one ``ModelNotReady`` lists the problems of
    every model (a stage that needs two models names both when both are missing)."""
    names = list(names)
    messages = []
    for name in names:
        entry = get_entry(name)
        if settings.model_source == "store":
            try:
                pull_model(name, settings)
            except ModelNotReady as err:
                messages.append(str(err))
                continue
        if problems := model_problems(name, settings):
            messages.append(str(_not_ready(entry, settings, "; ".join(problems))))
    if messages:
        raise ModelNotReady(" | ".join(messages))
    return [model_path(name, settings) for name in names]


def _hash_cache_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256.json")


def sha256_of(path: Path, *, use_cache: bool = True) -> str:
    """The file's sha256, from the hash cache when size and mtime are unchanged."""
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    cache_path = _hash_cache_path(path)
    if use_cache:
        try:
            cached = json.loads(cache_path.read_text())
            if {k: cached.get(k) for k in key} == key:
                return cached["sha256"]
        except (OSError, ValueError, KeyError):
            pass
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    _remember_hash(path, stat, value)
    return value


def _remember_hash(path: Path, stat: os.stat_result, value: str) -> None:
    """Writes the hash cache of a file whose sha256 (at size and mtime ``stat``) is known."""
    cache_path = _hash_cache_path(path)
    try:
        cache_path.write_text(
            json.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": value})
        )
    except OSError:
        log.debug("cannot write the hash cache %s (read-only cache?)", cache_path)


def _record_fetched(path: Path, digest: str, source: str) -> None:
    """Remembers the hash a file had when it arrived (for files the registry does not pin)."""
    path.with_name(f".{path.name}.fetched.json").write_text(
        json.dumps({"sha256": digest, "url": source})
    )


def _recorded_sha256(path: Path) -> str | None:
    try:
        return json.loads(path.with_name(f".{path.name}.fetched.json").read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        return None


def check_file(path: Path, spec: ModelFile, *, use_cache: bool) -> str | None:
    """None when the file matches its size and sha256 (or the hash seen at fetch), else why not."""
    size = path.stat().st_size
    if spec.size_bytes is not None and size != spec.size_bytes:
        return f"size {size} bytes, expected {spec.size_bytes}"
    expected = spec.sha256 or _recorded_sha256(path)
    if expected is None and spec.sha256_prefix is None:
        return None
    actual = sha256_of(path, use_cache=use_cache)
    if expected is not None and actual != expected:
        return f"sha256 {actual}, expected {expected}"
    if spec.sha256_prefix and not actual.startswith(spec.sha256_prefix):
        return f"sha256 {actual} does not start with {spec.sha256_prefix}"
    return None


@dataclass
class VerifyReport:
    """What ``verify_model`` found: missing and corrupt files (both empty = all good)."""

    name: str
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt


def verify_model(name: str, settings: Settings) -> VerifyReport:
    """Re-hashes every file of the model (ignoring the hash cache)."""
    entry = get_entry(name)
    folder = settings.model_cache / name
    report = VerifyReport(name)
    report.missing = [rel for rel in entry.required_paths() if not (folder / rel).is_file()]
    for f in entry.files:
        path = folder / f.name
        if f.extract or not path.is_file():
            continue
        problem = check_file(path, f, use_cache=False)
        if problem:
            report.corrupt.append(f"{f.name}: {problem}")
    return report


class ManualDownloadRequired(ModelFetchError):
    """The model's licence needs a registration; the message says what to do."""


def fetch_model(
    name: str,
    settings: Settings,
    *,
    attempts: int = 5,
    timeout_s: float = 60.0,
    on_progress: Callable[[str, int, int | None], None] | None = None,
) -> Path:
    """Downloads the model's missing files into the cache (resuming) and checks them.

    Raises ``ManualDownloadRequired`` for models behind a registration and ``ModelFetchError``
    when a download fails or does not match the registry (the partial file is removed on a
    mismatch, kept for resuming after a network error).
    """
    entry = get_entry(name)
    folder = settings.model_cache / name
    if entry.manual:
        if verify_model(name, settings).ok:
            return model_path(name, settings)
        raise ManualDownloadRequired(
            f"{name}: nlfpipe does not download this model (licence: {entry.license}). "
            f"{entry.instructions} Folder: {folder}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for spec in entry.files:
        final = folder / spec.name
        if final.is_file() and check_file(final, spec, use_cache=True) is None:
            _extract(final, spec, folder)
            continue
        if not spec.url:
            raise ModelFetchError(f"{name}: {spec.name} has no download URL in the registry")
        _download(spec, final, attempts=attempts, timeout_s=timeout_s, on_progress=on_progress)
        _extract(final, spec, folder)
    return model_path(name, settings)


def _download(
    spec: ModelFile,
    final: Path,
    *,
    attempts: int,
    timeout_s: float,
    on_progress: Callable[[str, int, int | None], None] | None,
) -> None:
    partial = final.with_name(final.name + ".part")
    last_error: Exception | None = None
    for attempt in range(attempts):
        try:
            _download_once(spec, partial, timeout_s, on_progress)
            break
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code not in (
                408,
                429,
                500,
                502,
                503,
                504,
            ):
                raise ModelFetchError(f"{spec.url}: HTTP {e.code} {e.reason}") from e
            last_error = e
            log.warning("download of %s interrupted (%s); resuming", spec.name, e)
            time.sleep(min(2.0**attempt * 0.1, 5.0))
    else:
        raise ModelFetchError(
            f"{spec.url}: download failed after {attempts} attempts ({last_error}); run the "
            f"fetch again to resume from {partial.stat().st_size if partial.exists() else 0} bytes"
        )
    problem = check_file(partial, spec, use_cache=False)
    if problem:
        partial.unlink(missing_ok=True)
        _hash_cache_path(partial).unlink(missing_ok=True)
        raise ModelFetchError(f"{spec.url}: downloaded file rejected, {problem}")
    digest = sha256_of(partial, use_cache=True)
    _hash_cache_path(partial).unlink(missing_ok=True)
    os.replace(partial, final)
    sha256_of(final, use_cache=False)
    if spec.sha256 is None:
        _record_fetched(final, digest, spec.url)
        log.warning("%s has no sha256 in the registry; it was %s on fetch", spec.name, digest)


def _download_once(
    spec: ModelFile,
    partial: Path,
    timeout_s: float,
    on_progress: Callable[[str, int, int | None], None] | None,
) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    if spec.size_bytes is not None and have == spec.size_bytes:
        return
    request = urllib.request.Request(spec.url, headers={"User-Agent": "nlfpipe-models"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left past what we have: the file is complete
            return
        raise
    with response:
        if "text/html" in response.headers.get("Content-Type", ""):
            raise ModelFetchError(
                f"{spec.url} answered with a web page, not the file. {spec.notes}".strip()
            )
        mode = "ab" if have and response.status == 206 else "wb"
        done = have if mode == "ab" else 0
        length = response.headers.get("Content-Length")
        total = done + int(length) if length is not None else spec.size_bytes
        with open(partial, mode) as out:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                if on_progress:
                    on_progress(spec.name, done, total)
        if total is not None and done < total:
            raise ConnectionError(f"connection closed after {done} of {total} bytes")


def _extract(archive: Path, spec: ModelFile, folder: Path) -> None:
    """Copies the members named in ``spec.extract`` out of a zip (matched by path suffix)."""
    if not spec.extract:
        return
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        for wanted in spec.extract:
            dest = folder / wanted
            if dest.is_file():
                continue
            matches = [n for n in names if n == wanted or n.endswith("/" + wanted)]
            if not matches:
                raise ModelFetchError(f"{archive.name} has no member {wanted!r}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            with zf.open(min(matches, key=len)) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(tmp, dest)


def store_key(name: str, rel: str) -> str:
    """The artifact-store key of a model file: ``models/<name>/<rel>``."""
    return f"{STORE_PREFIX}/{name}/{rel}"


def store_files(entry: ModelEntry) -> list[tuple[str, ModelFile | None]]:
    """What the store holds of a model: each plain file with its registry spec, and the
    extracted members of archives (spec None: the registry pins no hash for them)."""
    files: list[tuple[str, ModelFile | None]] = []
    for f in entry.files:
        if f.extract:
            files.extend((member, None) for member in f.extract)
        else:
            files.append((f.name, f))
    return files


@contextmanager
def _store_access(what: str, error: type[Exception]) -> Iterator[None]:
    """Turns a store or file-system failure into ``error`` with an actionable message."""
    try:
        yield
    except STORE_ERRORS as e:
        raise error(
            f"{what} failed: {type(e).__name__}: {e}. Check that the store is reachable, that "
            "NLFPIPE_STORE, NLFPIPE_STORE_ROOT, NLFPIPE_S3_ENDPOINT and the other S3 settings "
            "are right, and that NLFPIPE_MODEL_CACHE is writable"
        ) from e


def push_model(
    name: str, settings: Settings, store: ArtifactStore | None = None
) -> list[ArtifactInfo]:
    """Uploads the model's cached files to ``models/<name>/`` of the store, with their sha256.

    Raises ``ModelFetchError`` when the model is missing or corrupt in the local cache, or when
    the store cannot be written.
    """
    entry = get_entry(name)
    folder = settings.model_cache / name
    report = verify_model(name, settings)
    if not report.ok:
        problems = "; ".join([f"missing {rel}" for rel in report.missing] + report.corrupt)
        raise ModelFetchError(
            f"{name} is not ready in the local cache {folder} ({problems}); nothing was "
            f"uploaded. {_how_to_get(entry, settings)}"
        )
    with _store_access(f"uploading {name} to the model store", ModelFetchError):
        store = store or open_store(settings)
        return [
            store.put_file(store_key(name, rel), folder / rel, "application/octet-stream")
            for rel, _ in store_files(entry)
            if (folder / rel).is_file()
        ]


def pull_model(name: str, settings: Settings, store: ArtifactStore | None = None) -> None:
    """Copies the model's files missing from the local cache out of the store (``.part`` then
    rename, after checking the store's sha256 and the registry's pins).

    Does nothing (and opens no store) when every required file is in the local cache. Raises
    ``ModelNotReady`` (before downloading anything) when a required file is not in the store,
    when a stored copy is rejected, or when the store cannot be read.
    """
    entry = get_entry(name)
    folder = settings.model_cache / name
    required = set(entry.required_paths())
    missing = [(rel, spec) for rel, spec in store_files(entry) if not (folder / rel).is_file()]
    if not required.intersection(rel for rel, _ in missing):
        return
    with _store_access(f"model {name!r}: copying it from the model store", ModelNotReady):
        store = store or open_store(settings)
        found = [(rel, spec, store.stat(store_key(name, rel))) for rel, spec in missing]
        absent = [rel for rel, _, info in found if info is None and rel in required]
        if absent:
            raise _not_in_store(entry, settings, store, absent[0])
        for rel, spec, info in found:
            if info is not None:
                _pull_file(name, store, info, folder / rel, spec)


def _not_in_store(
    entry: ModelEntry, settings: Settings, store: ArtifactStore, rel: str
) -> ModelNotReady:
    folder = settings.model_cache / entry.name
    how = f" ({entry.instructions})" if entry.manual else ""
    return ModelNotReady(
        f"model {entry.name!r} is not ready: file {rel!r} is neither in the local cache "
        f"({folder / rel}) nor in the model store ({store.uri(store_key(entry.name, rel))}). "
        f"Run `{push_command(entry.name)}` with the same store settings{how}"
    )


def _pull_file(
    name: str, store: ArtifactStore, info: ArtifactInfo, final: Path, spec: ModelFile | None
) -> None:
    """Downloads one stored file to a unique ``.part`` beside ``final``; renames it once checked."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, part_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    os.close(fd)
    part = Path(part_name)
    try:
        store.get_file(info.key, part)
        actual = sha256_file(part)
        problem = _pulled_problem(part.stat().st_size, actual, info, spec)
        if problem:
            raise ModelNotReady(
                f"model {name!r}: the store's copy {info.uri} was rejected ({problem}); nothing "
                f"was written to {final}. Replace it with `{cli_program()} models push {name}` "
                f"from an intact local cache, or `{push_command(name)}`"
            )
        part.chmod(0o644)  # mkstemp made it private; other services may share the cache
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)
    _remember_hash(final, final.stat(), actual)
    if spec is not None and spec.sha256 is None:
        _record_fetched(final, actual, info.uri)
    log.info("copied %s from the model store to %s", info.uri, final)


def _pulled_problem(
    size: int, actual: str, info: ArtifactInfo, spec: ModelFile | None
) -> str | None:
    """None when a pulled file matches the store's recorded sha256 and the registry's pins."""
    if not info.sha256:
        return "the store recorded no sha256 for it"
    if actual != info.sha256:
        return f"its content has sha256 {actual}, the store recorded {info.sha256}"
    if spec is None:
        return None
    if spec.size_bytes is not None and size != spec.size_bytes:
        return f"size {size} bytes, the registry pins {spec.size_bytes}"
    if spec.sha256 and actual != spec.sha256:
        return f"sha256 {actual}, the registry pins {spec.sha256}"
    if spec.sha256_prefix and not actual.startswith(spec.sha256_prefix):
        return f"sha256 {actual} does not start with the registry's {spec.sha256_prefix}"
    return None


def store_state(name: str, store: ArtifactStore) -> str:
    """`stored` when every required file of the model is in the store, `partial` when some
    are, else `missing`."""
    keys = set(store.list(f"{STORE_PREFIX}/{name}/"))
    required = [store_key(name, rel) for rel in get_entry(name).required_paths()]
    found = sum(key in keys for key in required)
    if found == len(required):
        return "stored"
    return "partial" if found else "missing"
