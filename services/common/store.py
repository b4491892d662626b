"""The artifact store: one interface, two backends (S3/MinIO and a local folder).

Objects are immutable once written. Every object carries its sha256, size and media type.
Writes are atomic: a reader sees either nothing or the whole object.
"""

import hashlib
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from services.common.errors import ArtifactNotFound, InvalidInput
from services.common.settings import Settings

_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class ArtifactInfo:
    """What the store knows about one object."""

    key: str
    uri: str
    sha256: str
    size_bytes: int
    media_type: str


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
        raise InvalidInput(f"invalid artifact key {key!r}: use relative 'a/b/c' paths without '..'")
    return key


class ArtifactStore(ABC):
    """Stores and retrieves immutable artifacts by key."""

    @abstractmethod
    def put_file(self, key: str, path: Path, media_type: str) -> ArtifactInfo: ...

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> Path: ...

    @abstractmethod
    def stat(self, key: str) -> ArtifactInfo | None: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None: ...

    @abstractmethod
    def uri(self, key: str) -> str: ...

    @abstractmethod
    def key_from_uri(self, uri: str) -> str: ...

    def local_path(self, key: str) -> Path | None:
        """The stored file itself when the backend is a local folder (read-only use), else None."""
        return None

    def put_bytes(self, key: str, data: bytes, media_type: str) -> ArtifactInfo:
        """Stores a small object given in memory."""
        with tempfile.TemporaryDirectory(prefix="nlfpipe-put-") as tmp:
            path = Path(tmp, "blob")
            path.write_bytes(data)
            return self.put_file(key, path, media_type)

    def get_bytes(self, key: str) -> bytes:
        """Reads a small object into memory."""
        local = self.local_path(key)
        if local is not None:
            return local.read_bytes()
        with tempfile.TemporaryDirectory(prefix="nlfpipe-get-") as tmp:
            return self.get_file(key, Path(tmp, "blob")).read_bytes()

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def require(self, key: str) -> ArtifactInfo:
        """Like stat, but a missing object is ArtifactNotFound."""
        info = self.stat(key)
        if info is None:
            raise ArtifactNotFound(f"artifact {self.uri(key)} does not exist")
        return info


class LocalFolderStore(ArtifactStore):
    """Objects as files under a root folder; metadata in `<root>/.meta/<key>.json`."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _meta_path(self, key: str) -> Path:
        return self.root / ".meta" / f"{_check_key(key)}.json"

    def put_file(self, key: str, path: Path, media_type: str) -> ArtifactInfo:
        dest, meta = self._path(key), self._meta_path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        meta.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            shutil.copyfile(path, tmp)
            size = tmp.stat().st_size
            info = ArtifactInfo(key, self.uri(key), sha256_file(tmp), size, media_type)
            meta_tmp = meta.with_name(meta.name + ".tmp")
            meta_tmp.write_text(json.dumps(asdict(info)))
            os.replace(tmp, dest)
            os.replace(meta_tmp, meta)
        finally:
            tmp.unlink(missing_ok=True)
        return info

    def get_file(self, key: str, dest: Path) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise ArtifactNotFound(f"artifact {self.uri(key)} does not exist")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return dest

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def stat(self, key: str) -> ArtifactInfo | None:
        path, meta = self._path(key), self._meta_path(key)
        if not path.is_file():
            return None
        if meta.is_file():
            return ArtifactInfo(**json.loads(meta.read_text()))
        return ArtifactInfo(
            key, self.uri(key), sha256_file(path), path.stat().st_size, "application/octet-stream"
        )

    def list(self, prefix: str) -> list[str]:
        start = self.root / prefix.rpartition("/")[0]
        if not start.is_dir():
            return []
        keys = []
        for path in start.rglob("*"):
            rel = path.relative_to(self.root).as_posix()
            hidden = rel.startswith(".meta/") or path.name.startswith(".tmp-")
            if path.is_file() and not hidden and rel.startswith(prefix):
                keys.append(rel)
        return sorted(keys)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)
            self._meta_path(key).unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def key_from_uri(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise InvalidInput(f"{uri!r} is not in this store (expected file:// under {self.root})")
        path = Path(unquote(parsed.path))
        try:
            return _check_key(path.relative_to(self.root).as_posix())
        except ValueError:
            raise InvalidInput(f"{uri!r} is outside this store's root {self.root}") from None


class S3Store(ArtifactStore):
    """Objects in one S3/MinIO bucket, through the minio client; multipart for large files."""

    PART_SIZE = 32 * 1024 * 1024

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str | None = None,
    ):
        from minio import Minio

        self.bucket = bucket
        self.client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
        )

    def ensure_bucket(self) -> None:
        """Creates the bucket when it does not exist yet."""
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)

    def put_file(self, key: str, path: Path, media_type: str) -> ArtifactInfo:
        digest = sha256_file(path)
        self.client.fput_object(
            self.bucket,
            _check_key(key),
            str(path),
            content_type=media_type,
            metadata={"sha256": digest},
            part_size=self.PART_SIZE,
        )
        return ArtifactInfo(key, self.uri(key), digest, Path(path).stat().st_size, media_type)

    def get_file(self, key: str, dest: Path) -> Path:
        from minio.error import S3Error

        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            response = self.client.get_object(self.bucket, _check_key(key))
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchBucket"):
                raise ArtifactNotFound(f"artifact {self.uri(key)} does not exist") from None
            raise
        try:
            with open(tmp, "wb") as f:
                for chunk in response.stream(_CHUNK):
                    f.write(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
            response.close()
            response.release_conn()
        return dest

    def stat(self, key: str) -> ArtifactInfo | None:
        from minio.error import S3Error

        try:
            obj = self.client.stat_object(self.bucket, _check_key(key))
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                return None
            raise
        meta = {k.lower(): v for k, v in (obj.metadata or {}).items()}
        return ArtifactInfo(
            key,
            self.uri(key),
            meta.get("x-amz-meta-sha256", ""),
            int(obj.size or 0),
            obj.content_type or "application/octet-stream",
        )

    def list(self, prefix: str) -> list[str]:
        objects = self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
        return sorted(o.object_name for o in objects if o.object_name)

    def delete(self, keys: Iterable[str]) -> None:
        from minio.deleteobjects import DeleteObject

        errors = list(self.client.remove_objects(self.bucket, [DeleteObject(k) for k in keys]))
        if errors:
            raise RuntimeError(f"could not delete {len(errors)} objects: {errors[0]}")

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key_from_uri(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or parsed.netloc != self.bucket:
            raise InvalidInput(f"{uri!r} is not in this store (expected s3://{self.bucket}/...)")
        return _check_key(parsed.path.lstrip("/"))


def open_store(settings: Settings) -> ArtifactStore:
    """The store the settings describe; the S3 bucket is created when missing."""
    if settings.store_backend == "local":
        return LocalFolderStore(settings.store_root)
    store = S3Store(
        settings.s3_endpoint,
        settings.s3_access_key,
        settings.s3_secret_key,
        settings.s3_bucket,
        secure=settings.s3_secure,
        region=settings.s3_region,
    )
    store.ensure_bucket()
    return store
