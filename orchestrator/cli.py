"""`nlfpipe run VIDEO` (the embedded default) and `nlfpipe stack up|down|status`."""

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

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
    camera.add_argument("--static-camera", dest="static_camera", action="store_true",
                        default=False, help="the camera does not move: skip semseg and SLAM")
    camera.add_argument("--moving-camera", dest="static_camera", action="store_false",
                        help="estimate the camera's motion (semseg + SLAM; the default)")
    run.add_argument("--slam-backend", default="auto", choices=("auto", "colmap", "droid"),
                     help="camera tracker: colmap (CPU), droid (CUDA), auto (droid if it can "
                     "run, else colmap)")
    run.add_argument("--scale-source", default="auto", choices=("auto", "people", "depth", "none"),
                     help="metric scale of the camera path: from the people, a depth model, "
                     "auto (people, else depth), or none")
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
    run.add_argument("--output", type=Path, help="results folder (default: ./nlfpipe-results/NAME)")
    run.add_argument(
        "--test-models", action="store_true",
        help="run on small generated test models (no downloads; results are not meaningful)",
    )  # fmt: skip
    run.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                     help="where the local store, logs and stack state live (default .nlfpipe)")
    run.add_argument("--verbose", action="store_true", help="show Prefect's log lines")
    run.set_defaults(func=_run)

    stack = subparsers.add_parser(
        "stack", help="local services + a Prefect server with its UI (deploy and trigger runs)"
    )
    stack_sub = stack.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    up = stack_sub.add_parser("up", help="start the services and a Prefect server, then return")
    up.add_argument("--stages",
                    default="ingest,tracking,semseg,slam,pose,fitting,interpolation,render",
                    help="comma-separated stages to start")
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
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                          EPHEMERAL_STARTUP_TIMEOUT_S)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    if test_models:
        from orchestrator.testmodels import install_test_models

        os.environ.update(install_test_models(state_dir / "test-models"))


def _use_stack_prefect(state_dir: Path) -> str | None:
    from orchestrator.stack import prefect_api_url

    url = prefect_api_url(state_dir)
    if url and "PREFECT_API_URL" not in os.environ:
        os.environ["PREFECT_API_URL"] = url
    return os.environ.get("PREFECT_API_URL")


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    try:
        params = validate_params(params_from_args(args))
    except ParameterError as err:
        console.print(f"[red]invalid parameter[/red] {err}")
        return 2
    configure_embedded_env(args.state_dir, test_models=args.test_models, verbose=args.verbose)
    api_url = _use_stack_prefect(args.state_dir)
    if params.subjects.in_ui and not api_url:
        console.print("[red]invalid parameter[/red] subjects.in_ui: choosing subjects in the UI "
                      "needs a Prefect server; start one with `nlfpipe stack up`")
        return 2

    from orchestrator.stack import LocalStack, StackError

    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupt)
    started = time.monotonic()
    stack = LocalStack(required_stages(params), state_dir=args.state_dir)
    try:
        with console.status("starting services"):
            addresses = stack.start()
    except StackError as err:
        console.print(f"[red]{err}[/red]")
        return 3
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; services stopped[/yellow]")
        return 130
    try:
        os.environ.update(stack.address_env())
        console.print(
            "services: " + ", ".join(f"{s}@{a}" for s, a in addresses.items())
            + f" ({time.monotonic() - started:.1f} s)"
        )
        return _run_flow(params, args, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping services; nothing partial was published, "
                      "a re-run resumes from the cache[/yellow]")
        return 130
    finally:
        stack.stop()


def _interrupt(signum, _frame) -> None:
    """SIGTERM (and SIGINT where it was ignored) stop a run like Ctrl-C does."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _run_flow(params, args: argparse.Namespace, console) -> int:
    from orchestrator.flow import process_video
    from orchestrator.progress import TerminalProgress

    if not os.environ.get("PREFECT_API_URL"):
        console.print("starting Prefect (ephemeral mode; the first run migrates its database)")
        # One flow in this process and services of its own: no GPU admission to wait for.
        os.environ.setdefault("NLFPIPE_GPU_ADMISSION", "0")
    with TerminalProgress(console):
        state = process_video(params, return_state=True)
    if not state.is_completed():
        try:
            state.result()
        except Exception as err:  # noqa: BLE001 - reported to the person, with its cause
            console.print(f"[red]the run failed:[/red] {err}")
        return 1
    summary = state.result()
    output = args.output or Path("nlfpipe-results") / Path(params.video).stem
    exported = export_results(summary, output)
    print_summary(summary, exported, console)
    return 0


_SUFFIXES = {
    "video/mp4": ".mp4",
    "application/json": ".json",
    "image/png": ".png",
    "image/gif": ".gif",
    "application/x-bodycompress": ".bcz",
    "application/x-nlfpipe-masks+jsonl+zstd": ".jsonl.zst",
}


def result_file_name(stage: str, output: str, media_type: str) -> str:
    """`<stage>-<output><suffix>`, the suffix from the media type (`+npz` -> .npz); outputs
    named after their file (render's `exports_scene.glb`) keep their name."""
    if "." in output:
        return f"{stage}-{output}"
    suffix = _SUFFIXES.get(media_type) or (
        "." + media_type.rsplit("+", 1)[1] if "+" in media_type else ".bin"
    )
    return f"{stage}-{output}{suffix}"


def export_results(summary, folder: Path) -> Path:
    """Copies every output of the run from the store into `folder` (see result_file_name)."""
    from orchestrator.stage_tasks import flow_store

    store = flow_store()
    folder.mkdir(parents=True, exist_ok=True)
    for stage in summary.stages:
        for name, ref in stage.outputs.items():
            _export(store, ref.uri, folder / result_file_name(stage.stage, name, ref.media_type))
    if summary.summary_uri:
        key = store.key_from_uri(summary.summary_uri)
        (folder / "summary.json").write_bytes(store.get_bytes(key))
    return folder


def _export(store, uri: str, target: Path) -> None:
    key = store.key_from_uri(uri)
    local = store.local_path(key)
    if local is not None:
        shutil.copyfile(local, target)
    else:
        store.get_file(key, target)


def print_summary(summary, folder: Path, console) -> None:
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
        f"people found: [bold]{summary.people_found}[/bold], frames: {summary.frames}, "
        f"compute {summary.compute_seconds:.1f} s, waiting for you "
        f"{summary.waiting_seconds:.1f} s, wall {summary.wall_seconds:.1f} s; "
        f"results in [bold]{folder.resolve()}[/bold]"
    )


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
    for key, value in stack.address_env().items():
        print(f"export {key}={value}")
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
