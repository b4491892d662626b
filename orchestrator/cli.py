"""`nlfpipe run VIDEO` (the embedded default) and `nlfpipe stack up|down|status`."""

import argparse
import contextlib
import os
import re
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

from orchestrator.params import ParameterError, required_stages, validate_params

DEFAULT_STATE_DIR = Path(".nlfpipe")
#: Ephemeral Prefect migrates its database on the first flow of a process (11-21 s measured).
EPHEMERAL_STARTUP_TIMEOUT_S = "180"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `run` and `stack` to the `nlfpipe` parser."""
    run = subparsers.add_parser(
        "run",
        help="run the whole pipeline on one video on this machine (no Docker)",
        description="Runs every stage on one video: services start as local processes (or are "
        "reused from `nlfpipe stack up`), the store is a local folder, Prefect runs in "
        "ephemeral mode (or on the stack's server). A re-run resumes from the cache.",
    )
    run.add_argument("video", help="local path, http(s) URL, YouTube id, or s3:// / file:// URI")
    run.add_argument("--time-range", help="START-END, e.g. 00:45-01:25")
    run.add_argument("--seg-init-time", help="time of the segmentation init frame")
    run.add_argument("--max-persons", type=int, default=-1, help="-1: no limit (default)")
    who = run.add_mutually_exclusive_group()
    who.add_argument("--subjects", help="candidate indices to track, e.g. 0,2")
    who.add_argument(
        "--subject-point", action="append", default=[], metavar="X,Y",
        help="track the person under this pixel of the init frame (repeatable)",
    )  # fmt: skip
    who.add_argument(
        "--select-in-ui", action="store_true",
        help="pause after the candidates preview for a choice in the Prefect UI (needs the "
        "stack's Prefect server: nlfpipe stack up)",
    )  # fmt: skip
    camera = run.add_mutually_exclusive_group()
    camera.add_argument(
        "--static-camera",
        dest="static_camera",
        action="store_true",
        default=False,
        help="the camera does not move: skip semseg and SLAM",
    )
    camera.add_argument(
        "--moving-camera",
        dest="static_camera",
        action="store_false",
        help="estimate the camera's motion (semseg + SLAM; the default)",
    )
    run.add_argument(
        "--slam-backend",
        default="auto",
        choices=("auto", "colmap", "droid"),
        help="camera tracker: colmap (CPU), droid (CUDA), auto (droid if it can run, else colmap)",
    )
    run.add_argument(
        "--scale-source",
        default="auto",
        choices=("auto", "people", "depth", "none"),
        help="metric scale of the camera path: from the people, a depth model, "
        "auto (people, else depth), or none",
    )
    run.add_argument("--fov", type=float, dest="fov_deg", help="field of view in degrees")
    run.add_argument("--fps-factor", type=int, choices=(1, 2), help="default: 2 if fps <= 40")
    run.add_argument("--num-aug", type=int, default=5, help="NLF test-time augmentations")
    run.add_argument("--antialias-factor", type=int, default=2)
    run.add_argument("--batch-size", type=int, default=8, help="NLF frames per batch")
    run.add_argument("--internal-batch-size", type=int, default=8)
    run.add_argument(
        "--renderer", default="opengl", choices=("opengl", "none"),
        help="opengl: camera/world-view videos, previews and exports (default); none: no render",
    )  # fmt: skip
    run.add_argument("--force", action="store_true", help="recompute every stage")
    run.add_argument(
        "--output", type=Path,
        help="results folder (default: ./nlfpipe-results/<video name>-<options digest>, "
        "with nlfpipe-results/latest linking to it)",
    )  # fmt: skip
    run.add_argument(
        "--test-models", action="store_true",
        help="run on small generated test models (no downloads; results are not meaningful)",
    )  # fmt: skip
    run.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="where the local store, logs and stack state live (default .nlfpipe)",
    )
    run.add_argument("--verbose", action="store_true", help="show Prefect's log lines")
    run.set_defaults(func=_run)

    stack = subparsers.add_parser(
        "stack", help="local services + a Prefect server with its UI (deploy and trigger runs)"
    )
    stack_sub = stack.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    up = stack_sub.add_parser("up", help="start the services and a Prefect server, then return")
    up.add_argument(
        "--stages",
        default="ingest,tracking,semseg,slam,pose,fitting,interpolation,render",
        help="comma-separated stages to start",
    )
    up.add_argument("--prefect-port", type=int, default=4200)
    up.add_argument("--no-prefect", action="store_true", help="services only")
    up.add_argument("--test-models", action="store_true", help="use generated test models")
    up.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    up.set_defaults(func=_stack_up)
    down = stack_sub.add_parser("down", help="stop what `stack up` started")
    down.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    down.set_defaults(func=_stack_down)
    status = stack_sub.add_parser("status", help="show the stack's processes and health")
    status.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    status.set_defaults(func=_stack_status)


def params_from_args(args: argparse.Namespace) -> dict:
    """The flow parameters that the command line describes (validated by the caller)."""
    subjects: dict = {}
    if args.subjects:
        try:
            subjects["indices"] = [int(i) for i in args.subjects.split(",") if i.strip()]
        except ValueError:
            raise ParameterError("subjects", f"{args.subjects!r}: use indices like 0,2") from None
    if args.subject_point:
        try:
            subjects["points"] = [
                dict(zip(("x", "y"), map(float, p.split(",")), strict=True))
                for p in args.subject_point
            ]
        except ValueError:
            raise ParameterError(
                "subjects.points", "use X,Y pixel positions, e.g. 320,180"
            ) from None
    if args.select_in_ui:
        subjects["in_ui"] = True
    raw = {
        "video": args.video,
        "time_range": args.time_range,
        "seg_init_time": args.seg_init_time,
        "max_persons": args.max_persons,
        "subjects": subjects,
        "static_camera": args.static_camera,
        "fov_deg": args.fov_deg,
        "slam_backend": args.slam_backend,
        "scale_source": args.scale_source,
        "fps_factor": args.fps_factor,
        "nlf": {
            "num_aug": args.num_aug,
            "antialias_factor": args.antialias_factor,
            "batch_size": args.batch_size,
            "internal_batch_size": args.internal_batch_size,
        },
        "renderer": args.renderer,
        "force": args.force,
    }
    return raw


def configure_embedded_env(state_dir: Path, *, test_models: bool, verbose: bool = False) -> None:
    """Environment of an embedded run: local store, Prefect settings, optional test models."""
    state_dir = state_dir.resolve()
    os.environ.setdefault("NLFPIPE_STORE", "local")
    os.environ.setdefault("NLFPIPE_STORE_ROOT", str(state_dir / "store"))
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_S
    )
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_HOME", str(state_dir / "prefect"))
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")  # to the run log, not the terminal
    if test_models:
        from orchestrator.testmodels import install_test_models

        os.environ.update(install_test_models(state_dir / "test-models"))


def _use_stack_prefect(state_dir: Path) -> str | None:
    from orchestrator.stack import prefect_api_url

    url = prefect_api_url(state_dir)
    if url and "PREFECT_API_URL" not in os.environ:
        os.environ["PREFECT_API_URL"] = url
    return os.environ.get("PREFECT_API_URL")


#: Fields of the flow parameters as the `nlfpipe run` flags that set them.
CLI_FLAGS = {
    "time_range": "--time-range",
    "seg_init_time": "--seg-init-time",
    "max_persons": "--max-persons",
    "subjects.indices": "--subjects",
    "candidate_indices": "--subjects",
    "subjects.points": "--subject-point",
    "select point": "--subject-point",
    "subjects.in_ui": "--select-in-ui",
    "static_camera": "--static-camera",
    "fov_deg": "--fov",
    "slam_backend": "--slam-backend",
    "scale_source": "--scale-source",
    "fps_factor": "--fps-factor",
    "nlf.num_aug": "--num-aug",
    "nlf.antialias_factor": "--antialias-factor",
    "nlf.batch_size": "--batch-size",
    "nlf.internal_batch_size": "--internal-batch-size",
    "renderer": "--renderer",
}
_FLAG_PATTERN = re.compile(
    r"(?<![\w.-])("
    + "|".join(re.escape(k) for k in sorted(CLI_FLAGS, key=len, reverse=True))
    + r")(?![\w])"
)
_VALUE_PATTERN = re.compile(r"(--[a-z-]+)=(true|false|'[^']*'|\S+?)(?=[,;). ]|$)")


def in_cli_terms(message: str) -> str:
    """A message about flow parameters, with the `nlfpipe run` flags in place of field names
    (`fov_deg` -> `--fov`, `renderer='none'` -> `--renderer none`, `static_camera=true` ->
    `--static-camera`)."""
    text = _FLAG_PATTERN.sub(lambda m: CLI_FLAGS[m.group(1)], message)

    def value(match: re.Match) -> str:
        flag, raw = match.group(1), match.group(2).strip("'")
        if raw == "true":
            return flag
        if raw == "false":
            return {"--static-camera": "--moving-camera"}.get(flag, f"no {flag}")
        return f"{flag} {raw}"

    return _VALUE_PATTERN.sub(value, text)


def _console():
    """stderr console; without a terminal, lines are not wrapped at 80 columns."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=max(console.width, 200), soft_wrap=True)
    return console


def _run(args: argparse.Namespace) -> int:
    """`nlfpipe run`: returns 2 for bad parameters, else ends the process with the run's code
    (0 done, 1 failed, 3 services could not start, 130 interrupted)."""
    console = _console()
    try:
        params = validate_params(params_from_args(args))
    except ParameterError as err:
        console.print(f"[red]invalid parameter[/red] {in_cli_terms(str(err))}")
        return 2
    configure_embedded_env(args.state_dir, test_models=args.test_models, verbose=args.verbose)
    api_url = _use_stack_prefect(args.state_dir)
    if params.subjects.in_ui and not api_url:
        console.print(
            "[red]invalid parameter[/red] --select-in-ui: choosing subjects in the UI "
            "needs a Prefect server; start one with `nlfpipe stack up`"
        )
        return 2
    code = EmbeddedRun(params, args, console, embedded_prefect=not api_url).execute()
    # Everything was stopped and Prefect's client drained: skip the interpreter's teardown
    # (Prefect's exit hooks and torch take seconds on a loaded machine).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
            self.console.print(f"[red]{str(err).replace('<video>', video)}[/red]")
            return 3
        except StackError as err:
            self.console.print(f"[red]{err}[/red]")
            return 3
        finally:
            self._stop()

    def _starting_text(self) -> str:
        if self.prefect is not None and self.prefect.first_time:
            return (
                "starting services and Prefect (the first run creates Prefect's database in "
                f"{self.prefect.home}: 10-20 s more, once)"
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
                self.console.print(f"[red]the run failed:[/red] {failure_text(err)}")
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


def failure_text(err: BaseException) -> str:
    """One line for a failed run: the stage and its message, in the command line's terms."""
    from orchestrator.tasks import StageCallError

    if isinstance(err, StageCallError):
        text = f"{err.stage}: {err.details}" if err.code in {
            "INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND"
        } else str(err)  # fmt: skip
    else:
        text = str(err) or type(err).__name__
    return in_cli_terms(" ".join(text.split()))


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
        f"wall: stages {summary.wall_seconds:.1f} s, total {total_s:.1f} s (start-up "
        f"included); results in [bold]{folder.resolve()}[/bold]"
    )


def _stack_up(args: argparse.Namespace) -> int:
    from orchestrator.stack import LocalStack, StackError, start_prefect_server

    configure_embedded_env(args.state_dir, test_models=args.test_models)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    stack = LocalStack(stages, state_dir=args.state_dir, detach=True)
    try:
        stack.start()
    except StackError as err:
        print(err, file=sys.stderr)
        return 3
    extra = {"env": {k: v for k, v in os.environ.items() if k.startswith("NLFPIPE_")}}
    if not args.no_prefect:
        extra["prefect"] = start_prefect_server(args.prefect_port, args.state_dir)
    stack.write_state(extra)
    for stage, address in stack.addresses().items():
        print(f"{stage:<13} {address}")
    if "prefect" in extra:
        print(f"prefect UI    {extra['prefect']['ui_url']}")
        print(f"export PREFECT_API_URL={extra['prefect']['api_url']}")
    for name, value in stack.address_env().items():
        print(f"export {name}={value}")
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    from orchestrator.stack import stop_recorded

    stopped = stop_recorded(args.state_dir)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    from orchestrator.stack import read_state, stack_status

    rows = stack_status(args.state_dir)
    if not rows:
        print("no stack is running (start one with `nlfpipe stack up`)")
        return 1
    for row in rows:
        print(f"{row['name']:<15} {row['address']:<24} {row['status']}")
    return 0 if all(r["status"] == "SERVING" for r in rows) and read_state(args.state_dir) else 1
