"""The identity of what a stage computes with: the part of its cache key that is not the request.

Every model and data file that shapes a stage's output (weights, NLF's canonical points, body
model files, a vertex subset) is named with its sha256, together with the device and the
numeric precision where they change the numbers. A stage builds one `ModelIdentity` when it
loads its models and puts `identity.params()` into the parameters it gives `run_stage` under
the key ``"identity"``: another file, device or precision is then another cache key, never a
cache hit, and the manifest records what was used. docs/models.md lists what each stage records.
"""

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.models import get_entry, sha256_of
from services.common.settings import Settings

PARAMS_KEY = "identity"


@dataclass(frozen=True)
class FileIdentity:
    """One model or data file: its model (registry name or role), file and content."""

    name: str
    file: str  # path relative to the model's folder, or a label for data not read from a file
    sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "file": self.file, "sha256": self.sha256}


def file_identity(name: str, path: Path, folder: Path | None = None) -> FileIdentity:
    """The identity of a file (`file` relative to `folder` when given, else its name)."""
    path = Path(path)
    label = path.relative_to(folder).as_posix() if folder is not None else path.name
    return FileIdentity(name, label, sha256_of(path))


def data_identity(name: str, label: str, data: bytes) -> FileIdentity:
    """The identity of data a stage derived rather than read (e.g. a computed vertex subset)."""
    return FileIdentity(name, label, hashlib.sha256(data).hexdigest())


def registry_files(name: str, settings: Settings) -> list[FileIdentity]:
    """Every file a registry model needs, as found in the model cache (after `require_model`)."""
    folder = settings.model_cache / name
    return [file_identity(name, folder / rel, folder) for rel in get_entry(name).required_paths()]


@dataclass(frozen=True)
class ModelIdentity:
    """The files, device and precision of a loaded stage; None where they cannot matter
    (a CPU-only stage has no device choice, a stage without models no files)."""

    files: tuple[FileIdentity, ...] = ()
    device: str | None = None
    precision: str | None = None

    @classmethod
    def of(
        cls, files: Iterable[FileIdentity], device: str | None = None,
        precision: str | None = None,
    ) -> "ModelIdentity":
        return cls(tuple(files), device, precision)

    def params(self) -> dict:
        """JSON-able form for the cache parameters and the manifest."""
        out: dict = {"models": [f.as_dict() for f in self.files]}
        if self.device is not None:
            out["device"] = self.device
        if self.precision is not None:
            out["precision"] = self.precision
        return out


def with_identity(params: Mapping, identity: ModelIdentity) -> dict:
    """`params` plus the identity under ``"identity"`` (what a stage gives `run_stage`)."""
    if PARAMS_KEY in params:
        raise ValueError(f"parameters already have a {PARAMS_KEY!r} entry")
    return {**params, PARAMS_KEY: identity.params()}
