"""Stage services started together by one fork server (`services.common.forkserver`).

`start_forked` starts the fork server for a set of stages; each stage's process is then
handled through a `ForkedService`, which answers like the `subprocess.Popen` of a service
started on its own (pid, poll, wait, send_signal, kill), from the fork server's files.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import psutil

from services.common.forkserver import serve_command, stop_with_parent

#: Seconds to wait for the fork server to name a child's pid (it forks right after importing).
PID_TIMEOUT_S = 120.0


class ForkedService:
    """One stage's process, forked by the fork server `parent`; Popen's interface."""

    def __init__(self, stage: str, run_dir: Path, parent: subprocess.Popen):
        self.stage = stage
        self.run_dir = run_dir
        self.parent = parent
        self.port_file = run_dir / f"{stage}.port"
        self.args = serve_command(stage, 0, self.port_file)
        self.returncode: int | None = None
        self._pid: int | None = None

    @property
    def pid(self) -> int:
        """The child's pid (waits for the fork server to write it)."""
        deadline = time.monotonic() + PID_TIMEOUT_S
        while self._pid is None:
            with contextlib.suppress(OSError, ValueError):
                self._pid = int((self.run_dir / f"{self.stage}.pid").read_text())
                break
            if self.parent.poll() is not None or time.monotonic() > deadline:
                raise ProcessLookupError(f"the fork server started no {self.stage} service")
            time.sleep(0.02)
        return self._pid

    def poll(self) -> int | None:
        """The exit code once the child has ended, else None."""
        if self.returncode is not None:
            return self.returncode
        with contextlib.suppress(OSError, ValueError):
            self.returncode = int((self.run_dir / f"{self.stage}.exit").read_text())
            return self.returncode
        if self.parent.poll() is None:
            return None
        # The fork server is gone (killed): its children got SIGTERM and nobody records them.
        try:
            ended = psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, ProcessLookupError):
            ended = True
        if ended:
            self.returncode = -signal.SIGTERM
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start_forked(
    stages: list[str], state_dir: Path, env: Mapping[str, str], *, detach: bool
) -> tuple[subprocess.Popen, dict[str, ForkedService]]:
    """Starts the fork server for `stages` (logs in state_dir/logs, which the caller has
    rotated); returns it and each stage's handle."""
    run_dir = _run_dir(state_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    log_dir = Path(state_dir) / "logs"
    command = [sys.executable, "-m", "services.common.forkserver", "--run-dir", str(run_dir),
               "--log-dir", str(log_dir), *([] if detach else ["--stop-with-parent"]),
               *stages]  # fmt: skip
    with open(log_dir / "forkserver.log", "ab") as log:
        parent = subprocess.Popen(
            command, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=None if detach else stop_with_parent,
        )  # fmt: skip
    return parent, {stage: ForkedService(stage, run_dir, parent) for stage in stages}


def _run_dir(state_dir: Path) -> Path:
    """The fork server's files (pid, port and exit files) of this process's stack."""
    return Path(state_dir) / f"forked-{os.getpid()}"


def finish_forked(
    parent: subprocess.Popen, state_dir: Path, *, wait: bool = True, timeout_s: float = 5.0
) -> None:
    """Removes the fork server's files; with `wait` (its children were stopped), reaps it
    first. A detached stack's fork server outlives this process, so it is not waited for."""
    if wait:
        try:
            parent.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            parent.kill()
            parent.wait(timeout=5)
    shutil.rmtree(_run_dir(state_dir), ignore_errors=True)
