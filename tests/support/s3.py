"""A real S3-compatible server process (moto) for tests and benchmarks."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ACCESS_KEY = "testing"
SECRET_KEY = "testing-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Starts `moto_server` on a free loopback port; yields its endpoint "127.0.0.1:PORT"."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def bucket_store(endpoint: str, bucket: str):
    """An S3Store on the test server whose bucket exists."""
    from services.common.store import S3Store

    store = S3Store(endpoint, ACCESS_KEY, SECRET_KEY, bucket)
    store.ensure_bucket()
    return store


def s3_env(endpoint: str, bucket: str = "nlfpipe") -> dict[str, str]:
    """Environment variables that point nlfpipe's settings at a test S3 server."""
    return {
        "NLFPIPE_STORE": "s3",
        "NLFPIPE_S3_ENDPOINT": endpoint,
        "NLFPIPE_S3_ACCESS_KEY": ACCESS_KEY,
        "NLFPIPE_S3_SECRET_KEY": SECRET_KEY,
        "NLFPIPE_S3_BUCKET": bucket,
    }
