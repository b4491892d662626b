"""Model registry and cache: fetch (resume, checksum), verify, require_model, the CLI."""

import argparse
import hashlib
import io
import os
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.common import models, models_cli
from services.common.errors import ModelNotReady
from services.common.models import ModelEntry, ModelFetchError, ModelFile
from services.common.settings import load_settings

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """Serves files from a dict; can cut the first response short and answers Range requests."""

    def __init__(
        self,
        files: dict[str, bytes],
        cut_first_after: int | None = None,
        content_type: str = "application/octet-stream",
    ):
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        outer = self
        self.cut_first_after = cut_first_after

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Range")))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng := self.headers.get("Range"):
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut_first_after is not None:
                    body = body[: outer.cut_first_after]
                    outer.cut_first_after = None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def settings(tmp_path):
    return load_settings({"NLFPIPE_MODEL_CACHE": str(tmp_path / "cache")})


def _use_registry(monkeypatch, *entries: ModelEntry) -> None:
    monkeypatch.setattr(models, "load_registry", lambda: {e.name: e for e in entries})


def _entry(url: str, **file_fields) -> ModelEntry:
    spec = ModelFile(name="weights.bin", url=url, **file_fields)
    return ModelEntry(name="toy", description="toy model", license="MIT", files=(spec,))


def test_fetch_resumes_after_a_cut_connection(settings, monkeypatch):
    with _Server({"/w.bin": PAYLOAD}, cut_first_after=120_000) as server:
        _use_registry(
            monkeypatch, _entry(server.url + "/w.bin", sha256=SHA, size_bytes=len(PAYLOAD))
        )
        path = models.fetch_model("toy", settings)
    assert path == settings.model_cache / "toy" / "weights.bin"
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/w.bin", None), ("/w.bin", "bytes=120000-")]
    assert sorted(p.name for p in path.parent.iterdir()) == [
        ".weights.bin.sha256.json",
        "weights.bin",
    ]
    assert models.require_model("toy", settings) == path


def test_checksum_mismatch_is_rejected_and_nothing_is_left(settings, monkeypatch):
    with _Server({"/w.bin": PAYLOAD}) as server:
        _use_registry(monkeypatch, _entry(server.url + "/w.bin", sha256="0" * 64))
        with pytest.raises(ModelFetchError, match="rejected, sha256"):
            models.fetch_model("toy", settings)
    assert list((settings.model_cache / "toy").iterdir()) == []


def test_a_web_page_instead_of_the_file_is_rejected(settings, monkeypatch):
    with _Server({"/w.bin": b"<html>confirm</html>"}, content_type="text/html") as server:
        _use_registry(monkeypatch, _entry(server.url + "/w.bin", notes="Use a browser."))
        with pytest.raises(ModelFetchError, match="web page.*Use a browser"):
            models.fetch_model("toy", settings)
    assert not (settings.model_cache / "toy" / "weights.bin").exists()


def test_unpinned_hash_is_recorded_and_verify_catches_corruption(settings, monkeypatch):
    with _Server({"/w.bin": PAYLOAD}) as server:
        _use_registry(monkeypatch, _entry(server.url + "/w.bin"))
        path = models.fetch_model("toy", settings)
    assert models.verify_model("toy", settings).ok
    path.write_bytes(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1]))
    report = models.verify_model("toy", settings)
    assert report.corrupt == [
        f"weights.bin: sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}, expected {SHA}"
    ]
    with pytest.raises(ModelNotReady, match="corrupt"):
        models.require_model("toy", settings)


def test_require_model_reads_the_hash_cache_when_size_and_mtime_are_unchanged(
    settings, monkeypatch
):
    _use_registry(monkeypatch, _entry("http://unused", sha256=SHA))
    path = settings.model_cache / "toy" / "weights.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(PAYLOAD)
    assert models.require_model("toy", settings) == path
    stat = path.stat()
    path.write_bytes(bytes(len(PAYLOAD)))  # same size; put the old mtime back
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert models.require_model("toy", settings) == path  # cached hash: not re-read
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ModelNotReady, match="sha256"):
        models.require_model("toy", settings)


def test_missing_model_error_names_file_path_and_command(settings):
    with pytest.raises(ModelNotReady) as info:
        models.require_model("nlf-l", settings)
    message = str(info.value)
    expected = settings.model_cache / "nlf-l" / "nlf_l_multi_0.3.2.torchscript"
    assert "nlf_l_multi_0.3.2.torchscript" in message
    assert str(expected) in message
    assert "`.venv/bin/nlfpipe models fetch nlf-l`" in message


def test_archive_members_are_extracted(settings, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("nlf/canonical_verts/smpl.npy", b"verts")
        zf.writestr("nlf/canonical_joints/smpl.npy", b"joints")
    with _Server({"/d.zip": buf.getvalue()}) as server:
        spec = ModelFile(
            name="data.zip",
            url=server.url + "/d.zip",
            extract=("canonical_verts/smpl.npy", "canonical_joints/smpl.npy"),
        )
        _use_registry(monkeypatch, replace(_entry(""), files=(spec,)))
        folder = models.fetch_model("toy", settings)
    assert folder == settings.model_cache / "toy"
    assert (folder / "canonical_verts/smpl.npy").read_bytes() == b"verts"
    assert models.require_model("toy", settings) == folder
    (folder / "canonical_joints/smpl.npy").unlink()
    with pytest.raises(ModelNotReady, match="canonical_joints/smpl.npy"):
        models.require_model("toy", settings)


def test_registry_lists_every_model_the_pipeline_uses():
    registry = models.load_registry()
    assert {
        "nlf-l",
        "nlf-s",
        "nlf-data",
        "stcn",
        "maskrcnn",
        "deeplabv3",
        "droid-slam",
        "zoedepth",
        "rife",
        "smpl",
    } <= set(registry)
    for entry in registry.values():
        assert entry.license and entry.files
        assert entry.manual or all(f.url and f.url.startswith("https://") for f in entry.files)
    assert registry["smpl"].registration == "https://smpl.is.tue.mpg.de/"


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    models_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_fetch_of_a_registered_licence_model_prints_instructions(settings, monkeypatch, capsys):
    monkeypatch.setenv("NLFPIPE_MODEL_CACHE", str(settings.model_cache))
    assert _cli(["models", "fetch", "smpl"]) == 1
    err = capsys.readouterr().err
    assert "https://smpl.is.tue.mpg.de/" in err and "does not download" in err
    assert not (settings.model_cache / "smpl").exists()


def test_cli_path_list_and_verify(settings, monkeypatch, capsys):
    monkeypatch.setenv("NLFPIPE_MODEL_CACHE", str(settings.model_cache))
    assert _cli(["models", "path", "nlf-s"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(settings.model_cache / "nlf-s" / "nlf_s_multi_0.2.2.torchscript")
    assert _cli(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["model", "state", "used"]
    assert "nlf-l       missing" in "\n".join(lines[1:])
    assert _cli(["models", "verify", "nlf-s"]) == 1
    assert "MISSING nlf_s_multi_0.2.2.torchscript" in capsys.readouterr().out


def test_require_models_lists_every_missing_file_of_every_model(settings):
    with pytest.raises(ModelNotReady) as info:
        models.require_models(["nlf-l", "nlf-data", "smpl"], settings)
    message = str(info.value)
    for name in (
        "nlf_l_multi_0.3.2.torchscript",
        "canonical_verts/smpl.npy",
        "canonical_joints/smpl.npy",
        "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl",
        "basicmodel_m_lbs_10_207_0_v1.1.0.pkl",
        "basicmodel_f_lbs_10_207_0_v1.1.0.pkl",
        "kid_template.npy",
    ):
        assert name in message
    assert "`.venv/bin/nlfpipe models fetch nlf-data`" in message
    assert "`.venv/bin/nlfpipe models verify smpl`" in message
