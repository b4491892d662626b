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


def body_model_root(settings: Settings) -> Path:
    """The body_models folder: $SMPLFITTER_BODY_MODELS if set, else the model cache."""
    env = os.environ.get("SMPLFITTER_BODY_MODELS")
    return Path(env) if env else settings.model_cache


class BodyModels(Generic[T]):
    """Loaded body models by (model, gender); `factory(folder, gender)` loads one."""

    def __init__(self, settings: Settings, factory: Callable[[Path, str], T]):
        self.settings = settings
        self.root = body_model_root(settings)
        self._factory = factory
        self._loaded: dict[tuple[str, str], T] = {}
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

    def digests(self, body_model: str, gender: str) -> dict[str, str]:
        """sha256 of every file the model reads, by file name (for cache keys)."""
        folder = self.check(body_model, gender)
        return {
            p.name: models.sha256_of(p) for p in body_model_files(folder, body_model, gender)
        }

    def get(self, body_model: str, gender: str) -> T:
        with self._lock:
            key = (body_model, gender)
            if key not in self._loaded:
                self._loaded[key] = self._factory(self.check(body_model, gender), gender)
            return self._loaded[key]
