"""Settings of a service or client, read from environment variables (docs/configuration.md)."""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class SettingsError(ValueError):
    """An environment variable has a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    """Everything a process of nlfpipe reads from its environment."""

    store_backend: str
    store_root: Path
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_bucket: str
    s3_secure: bool
    s3_region: str | None
    model_cache: Path
    device: str
    grace_seconds: float
    log_level: str
    log_format: str
    host: str
    port: int | None
    model_source: str = "local"
    torch_threads: int | None = None  # None: the device's default (services.common.threads)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name}={value!r} is not valid; expected one of: {', '.join(choices)}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    if name not in env:
        return default
    value = env[name].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}={env[name]!r} is not a boolean; use true or false")


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _port(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) > 65535:
        raise SettingsError(f"{name}={raw!r} is not a TCP port (0-65535)")
    return int(raw)


def _threads(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "auto"):
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 1024:
        raise SettingsError(f"{name}={raw!r} is not valid; use auto or a thread count (1-1024)")
    return int(raw)


def env_choice(
    variable: str, choices: tuple[str, ...], environ: Mapping[str, str] | None = None
) -> str:
    """One of `choices` named by an environment variable (default: the first choice)."""
    return _choice(os.environ if environ is None else environ, variable, choices[0], choices)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Reads and validates the settings; errors name the variable and the accepted values."""
    env = os.environ if environ is None else environ
    backend = _choice(env, "NLFPIPE_STORE", "local", ("local", "s3"))
    endpoint = env.get("NLFPIPE_S3_ENDPOINT", "").strip()
    if backend == "s3" and not endpoint:
        raise SettingsError("NLFPIPE_STORE=s3 needs NLFPIPE_S3_ENDPOINT (host:port of MinIO/S3)")
    default_cache = Path.home() / ".cache" / "nlfpipe" / "models"
    return Settings(
        store_backend=backend,
        store_root=Path(env.get("NLFPIPE_STORE_ROOT", "") or ".nlfpipe/store").expanduser(),
        s3_endpoint=endpoint,
        s3_access_key=env.get("NLFPIPE_S3_ACCESS_KEY", ""),
        s3_secret_key=env.get("NLFPIPE_S3_SECRET_KEY", ""),
        s3_bucket=env.get("NLFPIPE_S3_BUCKET", "") or "nlfpipe",
        s3_secure=_bool(env, "NLFPIPE_S3_SECURE", False),
        s3_region=env.get("NLFPIPE_S3_REGION") or None,
        model_cache=Path(env.get("NLFPIPE_MODEL_CACHE", "") or default_cache).expanduser(),
        device=_choice(env, "NLFPIPE_DEVICE", "auto", ("auto", "cpu", "cuda")),
        grace_seconds=_number(env, "NLFPIPE_GRACE_SECONDS", 30.0, 0.0),
        log_level=_choice(
            env, "NLFPIPE_LOG_LEVEL", "info", ("debug", "info", "warning", "error")
        ).upper(),
        log_format=_choice(env, "NLFPIPE_LOG_FORMAT", "json", ("json", "text")),
        host=env.get("NLFPIPE_HOST", "") or "[::]",
        port=_port(env, "NLFPIPE_PORT"),
        model_source=_choice(env, "NLFPIPE_MODEL_SOURCE", "local", ("local", "store")),
        torch_threads=_threads(env, "NLFPIPE_TORCH_THREADS"),
    )


def resolve_device(settings: Settings) -> str:
    """The torch device to use: the configured one, or CUDA when available under "auto"."""
    if settings.device != "auto":
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
