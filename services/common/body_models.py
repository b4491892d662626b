"""Body model files (SMPL) for the stages that pose meshes: where they live, which files a model
needs, their identity for cache keys, and one loaded instance per (model, gender).

The folder is `$SMPLFITTER_BODY_MODELS` when set, else the model cache; a model's files are in
`<folder>/<model>/` (smplfitter's `model_root`).
"""

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from services.common import models
from services.common.errors import ModelNotReady
from services.common.identity import FileIdentity, ModelIdentity, file_identity
from services.common.settings import Settings

BODY_MODEL_FILES = {
    "smpl": ("basicmodel_{gender}_lbs_10_207_0_v1.1.0.pkl", "kid_template.npy"),
}
GENDER_TOKENS = {"smpl": {"neutral": "neutral", "female": "f", "male": "m"}}

T = TypeVar("T")


def body_model_files(model_root: Path, body_model: str, gender: str) -> list[Path]:
    """The files smplfitter reads for a body model (under `<body_models>/<model>/`)."""
    token = GENDER_TOKENS[body_model][gender]
    return [model_root / name.format(gender=token) for name in BODY_MODEL_FILES[body_model]]


def file_identities(folder: Path, body_model: str, gender: str) -> list[FileIdentity]:
    """The sha256 of every file the model reads, for cache keys (services.common.identity)."""
    return [
        file_identity(body_model, path, folder)
        for path in body_model_files(folder, body_model, gender)
    ]


def files_only_identity(folder: Path, body_model: str, gender: str, _model) -> ModelIdentity:
    """The identity of a loaded model that depends on its files only."""
    return ModelIdentity.of(file_identities(folder, body_model, gender))


def body_model_root(settings: Settings) -> Path:
    """The body_models folder: $SMPLFITTER_BODY_MODELS if set, else the model cache."""
    env = os.environ.get("SMPLFITTER_BODY_MODELS")
    return Path(env) if env else settings.model_cache


class BodyModels(Generic[T]):
    """Loaded body models by (model, gender): `factory(folder, gender)` loads one, and
    `identify(folder, body_model, gender, model)` says what its results depend on."""

    def __init__(
        self,
        settings: Settings,
        factory: Callable[[Path, str], T],
        identify: Callable[[Path, str, str, T], ModelIdentity] = files_only_identity,
    ):
        self.settings = settings
        self.root = body_model_root(settings)
        self._factory = factory
        self._identify = identify
        self._loaded: dict[tuple[str, str], T] = {}
        self._identities: dict[tuple[str, str], ModelIdentity] = {}
        self._lock = threading.Lock()

    def check(self, body_model: str, gender: str) -> Path:
        """The model's folder; ModelNotReady naming the missing files and how to get them."""
        folder = self.root / body_model
        missing = [p for p in body_model_files(folder, body_model, gender) if not p.is_file()]
        if missing:
            if not os.environ.get("SMPLFITTER_BODY_MODELS"):
                models.require_model(body_model, self.settings)  # the registry's full message
            raise ModelNotReady(
                f"body model {body_model!r} ({gender}) is not ready: missing "
                f"{', '.join(str(p) for p in missing)}. Register at https://smpl.is.tue.mpg.de, "
                f"then run `nlfpipe models fetch {body_model}` (or set SMPLFITTER_BODY_MODELS to "
                f"a folder holding {body_model}/ with these files)."
            )
        return folder

    def get(self, body_model: str, gender: str) -> T:
        with self._lock:
            key = (body_model, gender)
            if key not in self._loaded:
                folder = self.check(body_model, gender)
                model = self._factory(folder, gender)
                self._identities[key] = self._identify(folder, body_model, gender, model)
                self._loaded[key] = model
            return self._loaded[key]

    def identity(self, body_model: str, gender: str) -> ModelIdentity:
        """What the results of `get(body_model, gender)` depend on (after `get`)."""
        with self._lock:
            return self._identities[(body_model, gender)]
