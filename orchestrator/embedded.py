"""One `nlfpipe run` on this machine: services and Prefect's server start together, the flow
runs, the results are exported; a fully cached re-run is answered from its record; Ctrl-C
stops everything within seconds."""

import argparse
import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

from rich.markup import escape

from orchestrator.messages import failure_text
from orchestrator.params import required_stages


class EmbeddedRun:
    """One `nlfpipe run`: services and Prefect start together, the flow runs, results are
    exported; Ctrl-C stops everything within seconds."""

    def __init__(self, params, args: argparse.Namespace, console, *, embedded_prefect: bool):
        from orchestrator.replay import replay_key
        from orchestrator.stack import EmbeddedPrefect, LocalStack

        self.params = params
        self.args = args
        self.console = console
        self.state_dir = Path(args.state_dir)
        self.log_path = self.state_dir / "logs" / "run.log"
        self.started = time.monotonic()
        self.stack = LocalStack(required_stages(params), state_dir=self.state_dir)
        self.prefect = EmbeddedPrefect(self.state_dir) if embedded_prefect else None
        self.replay_key = (
            replay_key(params, self.stack.stages, os.environ, self.state_dir)
            if embedded_prefect
            else None
        )

    def _replayed(self) -> bool:
        """Answers the run from the record of an identical completed run, if there is one."""
        from orchestrator.replay import recorded_run
        from services.common.settings import load_settings
        from services.common.store import open_store

        store = open_store(load_settings())
        summary = recorded_run(self.state_dir, self.replay_key, store)
        if summary is None:
            return False
        folder = self._export(summary, time.monotonic() - self.started, 0.0, store=store)
        self.console.print(
            "every stage's result is recorded from an identical earlier run (same video, "
            "options, models and code): nothing was started; --force recomputes"
        )
        print_summary(summary, folder, self.console, total_s=_process_age_s())
        return True

    def execute(self) -> int:
        from orchestrator.stack import ModelsMissing, StackError

        try:
            if self.replay_key is not None and self._replayed():
                return 0
            # Ctrl-C (ignored or not in this shell) and SIGTERM stop everything here and now,
            # not through Prefect's crash handling.
            signal.signal(signal.SIGINT, self._on_interrupt)
            signal.signal(signal.SIGTERM, self._on_interrupt)
            if self.prefect is not None:
                os.environ["PREFECT_API_URL"] = self.prefect.api_url
                self.prefect.start()
                # One flow in this process and services of its own: no GPU admission to wait for.
                os.environ.setdefault("NLFPIPE_GPU_ADMISSION", "0")
            importer = threading.Thread(target=_import_flow, name="import-flow", daemon=True)
            importer.start()
            with self.console.status(self._starting_text()):
                addresses = self.stack.start()
                os.environ.update(self.stack.address_env())
                if self.prefect is not None:
                    self.prefect.wait_ready()
                importer.join()
            startup_s = time.monotonic() - self.started
            self.console.print(
                "services: "
                + ", ".join(f"{s}@{a}" for s, a in addresses.items())
                + f" (ready after {startup_s:.1f} s)"
            )
            return self._run_flow(startup_s)
        except ModelsMissing as err:
            video = shlex.quote(self.params.video)
            self.console.print(f"[red]{escape(str(err).replace('<video>', video))}[/red]")
            return 3
        except StackError as err:
            self.console.print(f"[red]{escape(str(err))}[/red]")
            return 3
        finally:
            self._stop()

    def _starting_text(self) -> str:
        if self.prefect is not None and self.prefect.first_time:
            return (
                "starting services and Prefect (the first run creates Prefect's database in "
                f"{self.prefect.home}: 10-30 s more, once)"
            )
        return "starting services and Prefect"

    def _run_flow(self, startup_s: float) -> int:
        from orchestrator.flow import process_video
        from orchestrator.progress import TerminalProgress

        _prefect_log_to_file(self.log_path, verbose=self.args.verbose)
        flow_started = time.monotonic()
        with TerminalProgress(self.console):
            state = process_video(self.params, return_state=True)
        if not state.is_completed():
            try:
                state.result()
            except Exception as err:  # noqa: BLE001 - reported to the person, with its cause
                self.console.print(f"[red]the run failed:[/red] {escape(failure_text(err))}")
                self.console.print(
                    f"full log: {self.log_path} (services: {self.state_dir / 'logs'}/<stage>.log)"
                )
            return 1
        summary = state.result()
        flow_s = time.monotonic() - flow_started
        if self.replay_key is not None:
            from orchestrator.replay import record_run

            record_run(self.state_dir, self.replay_key, summary)
        folder = self._export(summary, startup_s, flow_s)
        print_summary(summary, folder, self.console, total_s=_process_age_s())
        return 0

    def _export(self, summary, startup_s: float, flow_s: float, store=None) -> Path:
        from orchestrator.results import DEFAULT_ROOT, export_results, link_latest, run_folder_name

        folder = self.args.output or DEFAULT_ROOT / run_folder_name(self.params.video, self.params)
        extra = {
            "wall": {
                "startup_s": round(startup_s, 3),
                "flow_s": round(flow_s, 3),
                "total_s": round(_process_age_s(), 3),
            },
            "test_models": bool(self.args.test_models),
        }
        export_results(summary, folder, store, extra=extra)
        if self.args.output is None:
            link_latest(folder)
        return folder

    def _on_interrupt(self, _signum, _frame) -> None:
        self._stop_now()

    def _stop_now(self) -> NoReturn:
        """Ctrl-C: stop the services (their stage calls end with them; nothing partial is
        published) and Prefect, say so, and leave without waiting for the flow's threads."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self._stop(grace_s=INTERRUPT_GRACE_S)
        self.console.print(
            "[yellow]interrupted; services stopped[/yellow] (nothing partial was "
            "published; a re-run resumes from the cache)"
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)

    def _stop(self, grace_s: float | None = None) -> None:
        from orchestrator.stack import STOP_GRACE_S

        grace = STOP_GRACE_S if grace_s is None else grace_s
        if self.prefect is not None:
            if grace_s is None:
                _drain_prefect_client()
            self.prefect.terminate()
        self.stack.stop(grace_s=grace)
        if self.prefect is not None:
            self.prefect.stop(grace_s=1.0)


def _process_age_s() -> float:
    """Seconds since this process started (what the person waited, imports included)."""
    import psutil

    return time.time() - psutil.Process().create_time()


#: Seconds that services get to stop after Ctrl-C before they are killed.
INTERRUPT_GRACE_S = 1.0


def _drain_prefect_client(timeout_s: float = 5.0) -> None:
    """Sends the log lines and events the Prefect client still holds, while its server runs
    (otherwise the client retries a stopped server at exit, for a minute)."""
    if "prefect" not in sys.modules:
        return
    with contextlib.suppress(Exception):  # a private Prefect API: best effort
        from prefect._internal.concurrency.services import QueueService

        QueueService.drain_all(timeout=timeout_s)


def _import_flow() -> None:
    """Imports the flow (Prefect included, seconds) while the services start."""
    import orchestrator.flow  # noqa: F401
    import orchestrator.progress  # noqa: F401


def _prefect_log_to_file(path: Path, *, verbose: bool) -> None:
    """Prefect's log goes to `path`; the terminal shows it only with --verbose."""
    import logging

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        os.replace(path, path.with_name(path.name + ".1"))
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    loggers = [logging.getLogger()] + [
        logger for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]  # fmt: skip
    for logger in loggers:
        consoles = [
            h for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        ]  # fmt: skip
        if not consoles:
            continue
        logger.addHandler(handler)
        if not verbose:
            for console in consoles:
                logger.removeHandler(console)


def print_summary(summary, folder: Path, console, *, total_s: float) -> None:
    """The stage table, people and frames, stage wall and total wall, and the results folder."""
    from rich.table import Table

    table = Table(title=f"nlfpipe: {summary.video}")
    for column in ("stage", "result", "compute s", "call s", "attempts", "counts"):
        table.add_column(column, justify="right" if column.endswith(("s", "attempts")) else "left")
    for s in summary.stages:
        table.add_row(
            s.stage,
            "[green]cache hit[/green]" if s.cache_hit else "computed",
            f"{s.compute_seconds:.2f}",
            f"{s.wall_seconds:.2f}",
            str(s.attempts),
            ", ".join(f"{k}={v:g}" for k, v in sorted(s.counts.items())),
        )
    console.print(table)
    console.print(
        f"people found: [bold]{summary.people_found}[/bold], frames: {summary.frames}; "
        f"compute {summary.compute_seconds:.1f} s, waiting for you "
        f"{summary.waiting_seconds:.1f} s; wall: stages {summary.wall_seconds:.1f} s, total "
        f"{total_s:.1f} s (start-up included); results in [bold]{folder.resolve()}[/bold]"
    )
