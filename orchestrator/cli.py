"""`nlfpipe run VIDEO` (the embedded default) and `nlfpipe stack up|down|status`."""

import argparse
import os
import signal
import sys
from pathlib import Path

from orchestrator.messages import in_cli_terms
from orchestrator.params import ParameterError, validate_params

DEFAULT_STATE_DIR = Path(".nlfpipe")


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
    up.add_argument(
        "--no-ui", action="store_true",
        help="services and a Prefect server only: no store HTTP server, deployments or worker",
    )  # fmt: skip
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
    from rich.markup import escape
    console = _console()
    try:
        params = validate_params(params_from_args(args))
    except ParameterError as err:
        console.print(f"[red]invalid parameter[/red] {escape(in_cli_terms(str(err)))}")
        return 2
    configure_embedded_env(args.state_dir, test_models=args.test_models, verbose=args.verbose)
    api_url = _use_stack_prefect(args.state_dir)
    if params.subjects.in_ui and not api_url:
        console.print(
            "[red]invalid parameter[/red] --select-in-ui: choosing subjects in the UI "
            "needs a Prefect server; start one with `nlfpipe stack up`"
        )
        return 2
    from orchestrator.embedded import EmbeddedRun

    code = EmbeddedRun(params, args, console, embedded_prefect=not api_url).execute()
    # Everything was stopped and Prefect's client drained: skip the interpreter's teardown
    # (Prefect's exit hooks and torch take seconds on a loaded machine).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _stack_up(args: argparse.Namespace) -> int:
    from orchestrator.stack import LocalStack, StackError, start_prefect_server

    configure_embedded_env(args.state_dir, test_models=args.test_models)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    stack = LocalStack(stages, state_dir=args.state_dir, detach=True)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as background:  # the Prefect server starts while services do
        server = None if args.no_prefect else background.submit(
            start_prefect_server, args.prefect_port, args.state_dir
        )  # fmt: skip
        try:
            stack.start()
            prefect = server.result() if server else None
        except StackError as err:
            stack.stop()
            if server and server.exception() is None:
                os.killpg(server.result()["pid"], signal.SIGTERM)
            print(err, file=sys.stderr)
            return 3
    extra = {"env": {k: v for k, v in os.environ.items() if k.startswith("NLFPIPE_")}}
    if prefect:
        extra["prefect"] = prefect
        stack.write_state(extra)
        if not args.no_ui:
            from orchestrator.ui_stack import bring_up_ui

            try:
                extra.update(bring_up_ui(args.state_dir, extra["prefect"]["api_url"],
                                         stack.address_env()))  # fmt: skip
            except StackError as err:
                from orchestrator.stack import stop_recorded

                stop_recorded(args.state_dir)
                print(f"{err}\nthe stack was stopped", file=sys.stderr)
                return 3
    stack.write_state(extra)
    for stage, address in stack.addresses().items():
        print(f"{stage:<15} {address}")
    for name, entry in extra.items():
        if isinstance(entry, dict) and entry.get("pid"):
            print(f"{name.replace('_', '-'):<15} {entry.get('ui_url') or entry['address']}")
    for name in extra.get("deployments", []):
        print(f"deployment      {name}")
    if "prefect" in extra:
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
