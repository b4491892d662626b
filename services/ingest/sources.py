"""What a request's `source` names, and how it becomes a local file with a sha256.

Sources: a local path (as seen by the ingest service's own file system), an object of the
artifact store (`s3://` or `file://` URI), an http(s) URL, a YouTube URL or a bare YouTube id.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import unquote, urlparse

from services.common.errors import ArtifactNotFound, InvalidInput
from services.common.store import ArtifactInfo, ArtifactStore, sha256_file
from services.ingest import download

SUPPORTED = "a local path, an s3:// or file:// store URI, an http(s) URL or a YouTube id/URL"


class SourceKind(Enum):
    LOCAL = "local"
    STORE = "store"
    URL = "url"
    YOUTUBE = "youtube"


@dataclass(frozen=True)
class Source:
    """A classified source: `location` is a path, a store key or a URL, depending on `kind`."""

    kind: SourceKind
    location: str
    text: str


@dataclass(frozen=True)
class FetchedSource:
    """A source available locally (`path`), or as a store object (`artifact`)."""

    source: Source
    path: Path | None
    sha256: str
    artifact: ArtifactInfo | None = None


def classify_source(text: str, store: ArtifactStore) -> Source:
    """Tells what `text` names; InvalidInput for an empty text or an unsupported URL scheme."""
    text = text.strip()
    if not text:
        raise InvalidInput(f"source is empty: give {SUPPORTED}")
    scheme = urlparse(text).scheme.lower()
    if scheme in ("http", "https"):
        video_id = download.youtube_id_of_url(text)
        if video_id:
            return Source(SourceKind.YOUTUBE, download.youtube_url(video_id), text)
        return Source(SourceKind.URL, text, text)
    if scheme == "s3":
        return Source(SourceKind.STORE, store.key_from_uri(text), text)
    if scheme == "file":
        try:
            return Source(SourceKind.STORE, store.key_from_uri(text), text)
        except InvalidInput:
            return Source(SourceKind.LOCAL, unquote(urlparse(text).path), text)
    if len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise InvalidInput(
            f"source {text!r} has the unsupported URL scheme {scheme!r}: give {SUPPORTED}"
        )
    if download.YOUTUBE_ID.match(text) and not os.path.exists(text):
        return Source(SourceKind.YOUTUBE, download.youtube_url(text), text)
    return Source(SourceKind.LOCAL, text, text)


def fetch_source(
    source: Source,
    store: ArtifactStore,
    workdir: Path,
    max_height: int,
    on_bytes: Callable[[int, int], None],
) -> FetchedSource:
    """Makes a source available: store objects stay in the store, downloads land in workdir."""
    if source.kind is SourceKind.STORE:
        artifact = store.require(source.location)
        if artifact.sha256:
            return FetchedSource(source, None, artifact.sha256, artifact)
        # An object put into the bucket by other means carries no digest: hash it here.
        path = store.get_file(source.location, workdir / "store" / Path(source.location).name)
        return FetchedSource(source, path, sha256_file(path))
    if source.kind is SourceKind.LOCAL:
        path = Path(source.location).expanduser()
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "does not exist"
            raise ArtifactNotFound(
                f"source file {str(path)!r} {what} (local paths are resolved on the ingest "
                "service's machine)"
            )
        return FetchedSource(source, path, sha256_file(path))
    path = download.download(source.location, workdir / "download", max_height, on_bytes)
    return FetchedSource(source, path, sha256_file(path))
