"""The `nlfpipe` command: serve a stage, check health, manage models, run the pipeline."""

import argparse
import importlib
import os
import sys
from pathlib import Path

from services.common.stages import STAGES

# Subcommand groups that live with the code they drive; each module exposes register(subparsers).
_PLUGIN_MODULES = ("services.common.models_cli", "orchestrator.cli")


def _serve(args: argparse.Namespace) -> int:
    """Serves until stopped, then ends the process at once: the server has stopped and the
    logs are flushed, and the interpreter's teardown (torch, gRPC threads) would take seconds
    on a loaded machine while `nlfpipe run` waits for the service to exit."""
    import logging

    from services.common.server import serve

    code = serve(args.stage, port=args.port, port_file=args.port_file)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _health(args: argparse.Namespace) -> int:
    from services.common.client import health_status

    address, service = args.address, args.service
    if args.stage:
        spec = STAGES[args.stage]
        service = service or spec.service_name
        if address is None:
            from services.common.settings import load_settings

            address = f"127.0.0.1:{load_settings().port or spec.port}"
    if address is None:
        raise SystemExit("nlfpipe health: give an address (host:port) or --stage")
    status = health_status(address, service, timeout_s=args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nlfpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run one stage's gRPC service")
    serve.add_argument("stage", choices=sorted(STAGES))
    serve.add_argument("--port", type=int, help="TCP port (default: the stage's port; 0 = any)")
    serve.add_argument("--port-file", type=Path, help="write the bound port to this file")
    serve.set_defaults(func=_serve)

    health = sub.add_parser("health", help="check a service's health; exit 0 when SERVING")
    health.add_argument("address", nargs="?", help="host:port (default with --stage: this host)")
    health.add_argument("--service", default="", help="full gRPC service name (default: server)")
    health.add_argument(
        "--stage",
        choices=sorted(STAGES),
        help="check this stage's service, by default at 127.0.0.1 on the port it serves on "
        "(NLFPIPE_PORT, else the stage table's)",
    )
    health.add_argument("--timeout", type=float, default=5.0, help="seconds")
    health.set_defaults(func=_health)

    for name in _PLUGIN_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
