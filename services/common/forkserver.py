"""Several stage services, one process each, forked from one parent that has imported them.

A stage service process imports torch and its stage's modules before it can answer (1.5-4 s
of CPU each on a 2-core machine), so six of them starting together were most of a first
`nlfpipe run`'s start-up. Here one parent imports every stage's service module once and forks
a child per stage; the child shares those pages (copy on write) and only builds and loads its
stage. Each child is the service process that `nlfpipe serve <stage> --port 0` would be: its
own session, log, port file and signal handling. The parent stays to reap the children and
record their exit codes, forwards SIGTERM and SIGINT to them, and ends when they all have.

Files under --run-dir, per stage (read by `orchestrator.stack.LocalStack`):
  <stage>.pid   the child's pid, written by the parent right after the fork
  <stage>.port  the bound port, written by the child (`services.common.server.serve`)
  <stage>.exit  the child's exit code, written by the parent once it has reaped the child
The child's output goes to --log-dir/<stage>.log (appended).

Only a single-threaded parent forks (a thread that holds a lock at the fork would leave it
held in the child forever): if an import started a thread, every child is started as a plain
`nlfpipe serve` process instead, with the same files.

Usage: python -m services.common.forkserver --run-dir D --log-dir L [--stop-with-parent] STAGE...
"""

import argparse
import contextlib
import ctypes
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def stop_with_parent() -> None:
    """SIGTERM to this process when its parent ends (even by SIGKILL), so that no service is
    orphaned; also a `preexec_fn` for children started with subprocess."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def serve_command(stage: str, port: int, port_file: Path) -> list[str]:
    """The command line of one stage service process (`nlfpipe serve`)."""
    return [
        sys.executable, "-m", "services.common.cli", "serve", stage,
        "--port", str(port), "--port-file", str(port_file),
    ]  # fmt: skip


def preload(stages: list[str]) -> None:
    """Imports the shared server and each stage's service module. A module that fails to import
    is left to its child, which then fails with the error in its own log."""
    for name in ["services.common.server"] + [f"services.{stage}.service" for stage in stages]:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _write(path: Path, text: str) -> None:
    """Writes atomically; a run folder already removed (a detached stack) is no error."""
    with contextlib.suppress(OSError):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def _serve_in_child(
    stage: str, run_dir: Path, log_dir: Path, with_parent: bool, parent: int
) -> None:
    """The forked child: becomes the stage's service process; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.setsid()
        if with_parent:
            stop_with_parent()
            if os.getppid() != parent:  # the fork server ended before the line above
                os._exit(1)
        log = os.open(log_dir / f"{stage}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        from services.common.server import serve

        code = serve(stage, port=0, port_file=run_dir / f"{stage}.port")
    except BaseException:  # noqa: BLE001 - the child must end here, with the error in its log
        traceback.print_exc()
    finally:
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _spawn(stage: str, run_dir: Path, log_dir: Path, with_parent: bool) -> int:
    """A plain `nlfpipe serve` child (when forking is not safe); returns its pid."""
    with open(log_dir / f"{stage}.log", "ab") as log:
        popen = subprocess.Popen(
            serve_command(stage, 0, run_dir / f"{stage}.port"),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=stop_with_parent if with_parent else None,
        )  # fmt: skip
    return popen.pid


def start_children(
    stages: list[str], run_dir: Path, log_dir: Path, with_parent: bool, children: dict
) -> None:
    """Forks (or, when threads run, spawns) one service per stage, adding pid -> stage to
    `children` as each starts."""
    fork = threading.active_count() == 1
    me = os.getpid()
    for stage in stages:
        sys.stdout.flush()
        sys.stderr.flush()
        if fork:
            pid = os.fork()
            if pid == 0:
                _serve_in_child(stage, run_dir, log_dir, with_parent, me)
        else:
            pid = _spawn(stage, run_dir, log_dir, with_parent)
        children[pid] = stage
        _write(run_dir / f"{stage}.pid", str(pid))


def reap(children: dict, run_dir: Path) -> None:
    """Waits for every child; writes each one's exit code as it ends."""
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return
        stage = children.pop(pid, None)
        if stage is not None:
            _write(run_dir / f"{stage}.exit", str(os.waitstatus_to_exitcode(status)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--stop-with-parent", action="store_true")
    parser.add_argument("stages", nargs="+")
    args = parser.parse_args(argv)
    if args.stop_with_parent:
        stop_with_parent()
    children: dict[int, str] = {}
    stopping = threading.Event()

    def forward(_signum=None, _frame=None) -> None:
        stopping.set()
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    preload(args.stages)
    if not stopping.is_set():
        start_children(args.stages, args.run_dir, args.log_dir, args.stop_with_parent, children)
    if stopping.is_set():  # a signal came while the children started: they stop as well
        forward()
    reap(children, args.run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
