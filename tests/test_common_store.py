"""The artifact store behaves the same on both backends (local folder and a real S3 server)."""

import hashlib
import os
from pathlib import Path

import pytest

from services.common.errors import ArtifactNotFound, InvalidInput
from services.common.settings import load_settings
from services.common.store import LocalFolderStore, S3Store, open_store
from tests.support.s3 import s3_env


def test_put_get_stat_roundtrip(store, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    info = store.put_file("stages/x/abc/out.bin", src, "application/octet-stream")
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.size_bytes == len(data)
    assert store.stat("stages/x/abc/out.bin") == info
    assert store.get_file("stages/x/abc/out.bin", tmp_path / "back.bin").read_bytes() == data
    assert store.get_bytes("stages/x/abc/out.bin") == data
    assert store.key_from_uri(info.uri) == "stages/x/abc/out.bin"


def test_missing_objects(store, tmp_path: Path) -> None:
    assert store.stat("nope/x") is None
    assert not store.exists("nope/x")
    with pytest.raises(ArtifactNotFound, match="does not exist"):
        store.get_file("nope/x", tmp_path / "x")
    with pytest.raises(ArtifactNotFound):
        store.require("nope/x")


def test_list_and_delete(store) -> None:
    for name in ("a/1", "a/2", "a/sub/3", "b/1"):
        store.put_bytes(name, name.encode(), "text/plain")
    assert store.list("a/") == ["a/1", "a/2", "a/sub/3"]
    store.delete(["a/1", "a/sub/3"])
    assert store.list("a/") == ["a/2"]
    assert store.list("zzz/") == []


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a"])
def test_rejects_unsafe_keys(store, key: str) -> None:
    with pytest.raises(InvalidInput, match="invalid artifact key"):
        store.put_bytes(key, b"x", "text/plain")


def test_foreign_uri_is_rejected(local_store: LocalFolderStore, s3_store: S3Store) -> None:
    with pytest.raises(InvalidInput, match="not in this store"):
        local_store.key_from_uri("s3://bucket/a")
    with pytest.raises(InvalidInput, match="not in this store"):
        s3_store.key_from_uri("s3://other-bucket/a")
    with pytest.raises(InvalidInput, match="outside"):
        local_store.key_from_uri("file:///etc/passwd")


def test_s3_multipart_upload_streams_large_file(s3_store: S3Store, tmp_path: Path) -> None:
    size = S3Store.PART_SIZE + 1_000_003
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        f.truncate(size)
        f.seek(size - 7)
        f.write(b"the end")
    info = s3_store.put_file("big/video.mp4", src, "video/mp4")
    assert info.size_bytes == size
    back = s3_store.get_file("big/video.mp4", tmp_path / "back.mp4")
    assert back.stat().st_size == size
    assert s3_store.stat("big/video.mp4").sha256 == info.sha256
    assert not list(tmp_path.glob(".*.part"))


def test_local_write_is_atomic_and_hides_temporaries(local_store: LocalFolderStore) -> None:
    local_store.put_bytes("k/v", b"1", "text/plain")
    (local_store.root / "k" / ".tmp-leftover").write_bytes(b"partial")
    assert local_store.list("k/") == ["k/v"]
    assert local_store.local_path("k/v").read_bytes() == b"1"


def test_open_store_from_settings(s3_endpoint: str, tmp_path: Path) -> None:
    local = open_store(load_settings({"NLFPIPE_STORE_ROOT": str(tmp_path / "s")}))
    assert isinstance(local, LocalFolderStore)
    s3 = open_store(load_settings(s3_env(s3_endpoint, bucket="from-settings")))
    assert isinstance(s3, S3Store)
    s3.put_bytes("x", b"1", "text/plain")
    assert s3.uri("x") == "s3://from-settings/x"
