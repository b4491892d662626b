"""The model cache kept in the artifact store: push, pull on load, rejection of bad copies."""

import argparse
import functools
import hashlib
import io
import json
import os
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.common import models, models_cli
from services.common.errors import ModelNotReady
from services.common.models import ModelEntry, ModelFile
from services.common.settings import Settings, SettingsError, load_settings
from services.common.store import ArtifactStore, S3Store
from tests.support.s3 import s3_env

PAYLOAD = os.urandom(200_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
POINTS = b"canonical points"
WEIGHTS_KEY = "models/toy/weights.bin"
POINTS_KEY = "models/toy/canonical/points.npy"


def _entry(url: str = "http://unused/w.bin", **pins) -> ModelEntry:
    """A toy model: one plain file (with ``pins``) and one archive member."""
    weights = ModelFile(name="weights.bin", url=url, **pins)
    archive = ModelFile(
        name="data.zip", url="http://unused/d.zip", extract=("canonical/points.npy",)
    )
    return ModelEntry(name="toy", description="toy", license="MIT", files=(weights, archive))


def _use_registry(monkeypatch: pytest.MonkeyPatch, entry: ModelEntry) -> None:
    monkeypatch.setattr(models, "load_registry", lambda: {entry.name: entry})


def _store_env(store: ArtifactStore, endpoint: str) -> dict[str, str]:
    if isinstance(store, S3Store):
        return s3_env(endpoint, store.bucket)
    return {"NLFPIPE_STORE": "local", "NLFPIPE_STORE_ROOT": str(store.root)}


def _settings(env: dict[str, str], cache: Path, source: str = "store") -> Settings:
    return load_settings({**env, "NLFPIPE_MODEL_CACHE": str(cache), "NLFPIPE_MODEL_SOURCE": source})


def _fill_cache(cache: Path) -> None:
    (cache / "toy" / "canonical").mkdir(parents=True)
    (cache / "toy" / "weights.bin").write_bytes(PAYLOAD)
    (cache / "toy" / "canonical" / "points.npy").write_bytes(POINTS)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _push(s3_store: S3Store, s3_endpoint: str, tmp_path: Path) -> None:
    _fill_cache(tmp_path / "source")
    models.push_model("toy", _settings(s3_env(s3_endpoint, s3_store.bucket), tmp_path / "source"))


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    models_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def http_url(tmp_path: Path) -> Iterator[str]:
    """Serves PAYLOAD at <url>/w.bin from a local HTTP server."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "w.bin").write_bytes(PAYLOAD)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_model_source_setting() -> None:
    assert load_settings({}).model_source == "local"
    assert load_settings({"NLFPIPE_MODEL_SOURCE": "Store"}).model_source == "store"
    with pytest.raises(SettingsError, match="NLFPIPE_MODEL_SOURCE='s3' is not valid.*local, store"):
        load_settings({"NLFPIPE_MODEL_SOURCE": "s3"})


def test_push_then_pull_into_an_empty_cache_gives_the_same_bytes(
    store, s3_endpoint, tmp_path, monkeypatch
):
    _use_registry(monkeypatch, _entry(sha256=SHA, size_bytes=len(PAYLOAD)))
    env = _store_env(store, s3_endpoint)
    _fill_cache(tmp_path / "source")
    infos = models.push_model("toy", _settings(env, tmp_path / "source"))
    assert [(i.key, i.sha256, i.size_bytes) for i in infos] == [
        (WEIGHTS_KEY, SHA, len(PAYLOAD)),
        (POINTS_KEY, hashlib.sha256(POINTS).hexdigest(), len(POINTS)),
    ]
    assert store.stat(WEIGHTS_KEY).sha256 == SHA

    target = _settings(env, tmp_path / "empty")
    assert models.require_model("toy", target) == tmp_path / "empty" / "toy"
    folder = tmp_path / "empty" / "toy"
    assert (folder / "weights.bin").read_bytes() == PAYLOAD
    assert (folder / "canonical" / "points.npy").read_bytes() == POINTS
    assert (folder / "weights.bin").stat().st_mode & 0o777 == 0o644
    assert _files(folder) == [
        ".weights.bin.sha256.json",
        "canonical/.points.npy.sha256.json",
        "canonical/points.npy",
        "weights.bin",
    ]
    assert models.verify_model("toy", target).ok

    monkeypatch.setattr(models, "open_store", lambda s: pytest.fail("store opened"))
    assert models.require_model("toy", target) == folder  # all there: the store is not asked


def test_pulled_unpinned_file_records_the_stores_hash(s3_store, s3_endpoint, tmp_path, monkeypatch):
    _use_registry(monkeypatch, _entry())
    _push(s3_store, s3_endpoint, tmp_path)
    target = _settings(s3_env(s3_endpoint, s3_store.bucket), tmp_path / "empty")
    weights = models.require_model("toy", target) / "weights.bin"
    record = json.loads((weights.parent / ".weights.bin.fetched.json").read_text())
    assert record == {"sha256": SHA, "url": f"s3://{s3_store.bucket}/{WEIGHTS_KEY}"}
    weights.write_bytes(PAYLOAD[::-1])  # changed later in the cache: caught on load
    with pytest.raises(ModelNotReady, match=f"corrupt: sha256 .*expected {SHA}"):
        models.require_model("toy", target)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"sha256": SHA}, f"content has sha256 [0-9a-f]{{64}}, the store recorded {SHA}"),
        ({}, "the store recorded no sha256"),
    ],
)
def test_a_corrupt_store_object_is_rejected_and_nothing_is_left(
    s3_store, s3_endpoint, tmp_path, monkeypatch, metadata, message
):
    _use_registry(monkeypatch, _entry())
    _push(s3_store, s3_endpoint, tmp_path)
    bad = bytes(len(PAYLOAD)) if metadata else PAYLOAD
    s3_store.client.put_object(
        s3_store.bucket, WEIGHTS_KEY, io.BytesIO(bad), len(bad), metadata=metadata
    )
    target = _settings(s3_env(s3_endpoint, s3_store.bucket), tmp_path / "empty")
    with pytest.raises(ModelNotReady, match=message) as info:
        models.require_model("toy", target)
    assert f"s3://{s3_store.bucket}/{WEIGHTS_KEY} was rejected" in str(info.value)
    assert "`.venv/bin/nlfpipe models fetch toy --to-store`" in str(info.value)
    assert _files(tmp_path / "empty") == []


@pytest.mark.parametrize(
    ("pins", "message"),
    [
        ({"sha256": "0" * 64}, f"sha256 {SHA}, the registry pins {'0' * 64}"),
        ({"size_bytes": len(PAYLOAD) + 1}, f"size {len(PAYLOAD)} bytes, the registry pins"),
        ({"sha256_prefix": "xyz"}, "does not start with the registry's xyz"),
    ],
)
def test_a_store_object_that_breaks_a_registry_pin_is_rejected(
    s3_store, s3_endpoint, tmp_path, monkeypatch, pins, message
):
    _use_registry(monkeypatch, _entry())
    _push(s3_store, s3_endpoint, tmp_path)
    _use_registry(monkeypatch, _entry(**pins))
    target = _settings(s3_env(s3_endpoint, s3_store.bucket), tmp_path / "empty")
    with pytest.raises(ModelNotReady, match=message):
        models.require_model("toy", target)
    assert _files(tmp_path / "empty") == []


def test_a_model_missing_from_the_store_names_the_store_and_the_command(
    s3_store, s3_endpoint, tmp_path, monkeypatch
):
    _use_registry(monkeypatch, _entry())
    s3_store.put_bytes(WEIGHTS_KEY, PAYLOAD, "application/octet-stream")  # points.npy absent
    target = _settings(s3_env(s3_endpoint, s3_store.bucket), tmp_path / "cache")
    with pytest.raises(ModelNotReady) as info:
        models.require_model("toy", target)
    message = str(info.value)
    assert f"s3://{s3_store.bucket}/{POINTS_KEY}" in message
    assert str(tmp_path / "cache" / "toy" / "canonical" / "points.npy") in message
    assert "Run `.venv/bin/nlfpipe models fetch toy --to-store`" in message
    assert _files(tmp_path / "cache") == []  # nothing pulled while the model is incomplete


def test_local_source_never_touches_the_store(s3_store, s3_endpoint, tmp_path, monkeypatch):
    _use_registry(monkeypatch, _entry())
    _push(s3_store, s3_endpoint, tmp_path)
    monkeypatch.setattr(models, "open_store", lambda s: pytest.fail("store opened"))
    target = _settings(s3_env(s3_endpoint, s3_store.bucket), tmp_path / "cache", source="local")
    with pytest.raises(ModelNotReady, match=r"Run `.venv/bin/nlfpipe models fetch toy` \(with"):
        models.require_model("toy", target)
    assert not (tmp_path / "cache").exists()


def test_an_unusable_store_is_model_not_ready(tmp_path, monkeypatch):
    _use_registry(monkeypatch, _entry())
    (tmp_path / "not-a-folder").write_text("")
    env = {"NLFPIPE_STORE": "local", "NLFPIPE_STORE_ROOT": str(tmp_path / "not-a-folder")}
    with pytest.raises(
        ModelNotReady, match="copying it from the model store failed.*NLFPIPE_STORE_ROOT"
    ):
        models.require_model("toy", _settings(env, tmp_path / "cache"))


def test_push_refuses_a_model_missing_from_the_local_cache(
    s3_store, s3_endpoint, tmp_path, monkeypatch
):
    _use_registry(monkeypatch, _entry())
    source = _settings(s3_env(s3_endpoint, s3_store.bucket), tmp_path / "cache")
    with pytest.raises(
        models.ModelFetchError,
        match="missing weights.bin; missing canonical/points.npy.*nothing was "
        "uploaded. Run `.venv/bin/nlfpipe models fetch toy`",
    ):
        models.push_model("toy", source)
    assert s3_store.list("models/") == []


def test_cli_fetch_to_store_then_list(
    s3_store, s3_endpoint, tmp_path, monkeypatch, http_url, capsys
):
    one_file = ModelEntry(
        name="toy",
        description="toy",
        license="MIT",
        files=(ModelFile(name="weights.bin", url=http_url + "/w.bin", sha256=SHA),),
    )
    _use_registry(monkeypatch, one_file)
    _set_env(
        monkeypatch,
        {**s3_env(s3_endpoint, s3_store.bucket), "NLFPIPE_MODEL_CACHE": str(tmp_path / "cache")},
    )
    assert _cli(["models", "fetch", "toy", "--to-store"]) == 0
    assert f"uploaded s3://{s3_store.bucket}/{WEIGHTS_KEY} (200000 bytes, sha256 {SHA})" in (
        capsys.readouterr().err
    )
    assert s3_store.get_bytes(WEIGHTS_KEY) == PAYLOAD

    monkeypatch.setenv("NLFPIPE_MODEL_CACHE", str(tmp_path / "other"))
    monkeypatch.setenv("NLFPIPE_MODEL_SOURCE", "store")
    assert _cli(["models", "list", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["state"], row["store"]) == ("missing", "stored")
    assert not (tmp_path / "other").exists()  # listing copies nothing out of the store
    assert _cli(["models", "list"]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.startswith("model       state    store")
    assert row.startswith("toy         missing  store:stored   ")


def test_cli_push_of_a_hand_placed_model_and_list_without_a_store(
    s3_store, s3_endpoint, tmp_path, monkeypatch, capsys
):
    _use_registry(monkeypatch, _entry())
    _fill_cache(tmp_path / "cache")
    _set_env(
        monkeypatch,
        {**s3_env(s3_endpoint, s3_store.bucket), "NLFPIPE_MODEL_CACHE": str(tmp_path / "cache")},
    )
    assert _cli(["models", "push", "toy"]) == 0
    assert sorted(s3_store.list("models/toy/")) == [POINTS_KEY, WEIGHTS_KEY]
    (tmp_path / "cache" / "toy" / "weights.bin").unlink()
    assert _cli(["models", "push", "toy"]) == 1
    assert "toy: NOT UPLOADED: toy is not ready" in capsys.readouterr().err

    monkeypatch.setenv("NLFPIPE_STORE", "local")
    monkeypatch.setattr(models_cli, "open_store", lambda s: pytest.fail("store opened"))
    assert _cli(["models", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["store"] is None
