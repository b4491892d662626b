"""Stage services as real processes (`nlfpipe serve <stage>`) for integration tests."""

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from services.common.client import wait_serving
from services.common.stages import stage_spec


@contextlib.contextmanager
def start_service(
    stage: str, env: Mapping[str, str], ready_timeout_s: float = 120.0, wait_ready: bool = True
) -> Iterator[tuple[subprocess.Popen, str]]:
    """Starts a stage service on a free port; yields (process, "127.0.0.1:PORT")."""
    exe = Path(sys.executable).with_name("nlfpipe")
    with tempfile.TemporaryDirectory(prefix=f"svc-{stage}-") as tmp:
        port_file = Path(tmp, "port")
        log = open(Path(tmp, "log"), "w+")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [str(exe), "serve", stage, "--port", "0", "--port-file", str(port_file)],
            env={**os.environ, "NLFPIPE_LOG_FORMAT": "text", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + ready_timeout_s
            while not port_file.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"{stage} service did not start:\n{log.read()}")
                time.sleep(0.05)
            address = f"127.0.0.1:{port_file.read_text()}"
            if wait_ready:
                wait_serving(address, stage_spec(stage).service_name, ready_timeout_s)
            yield proc, address
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()
