"""The ingest service as a real process, called over gRPC, with the store on a moto S3 server."""

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from nlfpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from services.common.client import call_stage, open_channel
from services.common.store import S3Store
from tests.support.s3 import bucket_store, s3_env
from tests.support.services import start_service
from tests.support.videos import make_test_video
from tests.test_ingest_units import (
    normalize_file,
    read_indices,
    video_packet_digest,
    write_indexed_video,
    write_truncated_video,
    write_zero_frame_video,
)

BUCKET = "ingest-service-test"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    make_test_video(folder / "figures.mp4", seconds=2.0)
    write_indexed_video(folder / "indexed.mp4", 120, audio=True)
    return folder


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> S3Store:
    return bucket_store(s3_endpoint, BUCKET)


@pytest.fixture(scope="module")
def stub(s3_endpoint: str, s3: S3Store) -> Iterator[ingest_pb2_grpc.IngestServiceStub]:
    with start_service("ingest", s3_env(s3_endpoint, BUCKET)) as (_, address):
        channel = open_channel(address)
        yield ingest_pb2_grpc.IngestServiceStub(channel)
        channel.close()


@pytest.fixture(scope="module")
def http_root(videos: Path) -> Iterator[str]:
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(videos))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def ingest(stub, source: str, time_range: str = "", progress: list | None = None, **fields):
    request = ingest_pb2.RunRequest(source=source, time_range=time_range, **fields)
    on_progress = progress.append if progress is not None else None
    return call_stage(stub.Run, request, timeout_s=120, on_progress=on_progress)


def fetch(s3: S3Store, ref, dest: Path) -> Path:
    return s3.get_file(s3.key_from_uri(ref.uri), dest)


def test_compliant_local_file_is_copied_then_cached(stub, s3, videos, tmp_path):
    progress = []
    result = ingest(stub, str(videos / "figures.mp4"), progress=progress)
    assert not result.reencoded and list(result.reencode_reasons) == []
    assert (result.info.frame_count, result.info.fps) == (60, 30)
    assert (result.info.width, result.info.height) == (320, 240)
    assert result.info.duration_seconds == pytest.approx(2.0)
    assert result.video.uri.startswith(f"s3://{BUCKET}/stages/ingest/")
    assert result.video.media_type == "video/mp4" and result.probe.media_type == "application/json"
    stored = fetch(s3, result.video, tmp_path / "video.mp4")
    assert video_packet_digest(stored) == video_packet_digest(videos / "figures.mp4")
    assert any(p.step == "copy" and p.done == p.total == 60 for p in progress)
    probe_json = s3.get_bytes(s3.key_from_uri(result.probe.uri)).decode()
    assert '"frame_count": 60' in probe_json

    again = ingest(stub, str(videos / "figures.mp4"))
    assert again.summary.cache_hit and not result.summary.cache_hit
    assert again.video == result.video and again.info == result.info
    forced = ingest(stub, str(videos / "figures.mp4"), force=True)
    assert not forced.summary.cache_hit and forced.video.sha256 == result.video.sha256


def test_store_source_with_cut_is_frame_accurate(stub, s3, videos, tmp_path):
    s3.put_file("uploads/indexed.mp4", videos / "indexed.mp4", "video/mp4")
    result = ingest(stub, f"s3://{BUCKET}/uploads/indexed.mp4", "00:01.5-00:03")
    assert result.reencoded and result.reencode_reasons[-1].startswith("cut to 00:00:01.500")
    assert result.info.frame_count == 45 and result.source_info.frame_count == 120
    assert result.info.has_audio and result.source_info.has_audio
    assert read_indices(fetch(s3, result.video, tmp_path / "cut.mp4")) == list(range(45, 90))
    assert result.summary.counts["frames"] == 45


def test_http_url_is_downloaded_with_ytdlp(stub, videos, http_root):
    progress = []
    result = ingest(stub, f"{http_root}/indexed.mp4", "00:00-00:01", progress=progress)
    assert result.info.frame_count == 30 and result.source_info.frame_count == 120
    assert any(p.step == "download" and p.done == p.total > 0 for p in progress)
    again = ingest(stub, f"{http_root}/indexed.mp4", "00:00-00:01")
    assert again.summary.cache_hit  # same bytes, same key, though downloaded again


@pytest.fixture(scope="module")
def bad_files(videos: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.mp4").write_text("this is not a video\n" * 50)
    write_zero_frame_video(folder / "empty.mkv")
    # A stream-copied (index-first) file cut in half, as an interrupted download leaves it.
    normalize_file(videos / "indexed.mp4", folder / "faststart.mp4")
    write_truncated_video(folder / "faststart.mp4", folder / "truncated.mp4")
    return folder


@pytest.mark.parametrize(
    ("source", "time_range", "code", "message"),
    [
        ("{bad}/missing.mp4", "", grpc.StatusCode.NOT_FOUND, "does not exist"),
        ("{bad}/notes.mp4", "", grpc.StatusCode.INVALID_ARGUMENT, "not a readable video"),
        ("{bad}/empty.mkv", "", grpc.StatusCode.INVALID_ARGUMENT, "zero frames"),
        ("{bad}/truncated.mp4", "", grpc.StatusCode.INVALID_ARGUMENT, "is corrupt"),
        ("http://127.0.0.1:9/x.mp4", "", grpc.StatusCode.INVALID_ARGUMENT, "could not be down"),
        ("{http}/missing.mp4", "", grpc.StatusCode.INVALID_ARGUMENT, "404"),
        ("{videos}/indexed.mp4", "1:00", grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
        ("{videos}/indexed.mp4", "00:03-00:02", grpc.StatusCode.INVALID_ARGUMENT, "after the"),
        ("{videos}/indexed.mp4", "00:03-00:05", grpc.StatusCode.INVALID_ARGUMENT, "outside"),
        ("ftp://example.org/x.mp4", "", grpc.StatusCode.INVALID_ARGUMENT, "unsupported URL"),
        (f"s3://{BUCKET}/no/such.mp4", "", grpc.StatusCode.NOT_FOUND, "does not exist"),
        ("s3://other-bucket/x.mp4", "", grpc.StatusCode.INVALID_ARGUMENT, "not in this store"),
        ("", "", grpc.StatusCode.INVALID_ARGUMENT, "source is empty"),
    ],
)
def test_bad_input_is_a_clear_error_and_publishes_nothing(
    stub, s3, videos, bad_files, http_root, source, time_range, code, message
):
    before = s3.list("stages/ingest/")
    source = source.format(bad=bad_files, videos=videos, http=http_root)
    with pytest.raises(grpc.RpcError) as caught:
        ingest(stub, source, time_range)
    assert caught.value.code() == code
    assert message in caught.value.details()
    assert s3.list("stages/ingest/") == before
