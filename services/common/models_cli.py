"""`nlfpipe models list|fetch|verify|path`: manage the model cache (docs/models.md)."""

import argparse
import json
import sys

from services.common import models
from services.common.settings import Settings, load_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the `models` command group to the `nlfpipe` parser."""
    parser = subparsers.add_parser("models", help="list, fetch and verify model weight files")
    sub = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    listing = sub.add_parser("list", help="every model of the registry and whether it is cached")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=_list)

    fetch = sub.add_parser("fetch", help="download models into the cache (resumes, checks sha256)")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="models to fetch")
    fetch.add_argument("--all", action="store_true", help="every model of the registry")
    fetch.set_defaults(func=_fetch)

    verify = sub.add_parser("verify", help="re-hash cached models; exit 1 if any is bad")
    verify.add_argument("names", nargs="*", metavar="NAME", help="models (default: all)")
    verify.set_defaults(func=_verify)

    path = sub.add_parser("path", help="print where a model is (or will be) in the cache")
    path.add_argument("name", metavar="NAME")
    path.set_defaults(func=_path)


def _selected(names: list[str], all_models: bool) -> list[str]:
    registry = models.load_registry()
    chosen = sorted(registry) if all_models or not names else names
    unknown = [n for n in chosen if n not in registry]
    if unknown:
        raise SystemExit(
            f"unknown model(s) {', '.join(unknown)}; known: {', '.join(sorted(registry))}"
        )
    return chosen


def _state(name: str, settings: Settings) -> str:
    try:
        models.require_model(name, settings)
    except models.ModelNotReady:
        return "missing" if models.verify_model(name, settings).missing else "corrupt"
    return "ready"


def _list(args: argparse.Namespace) -> int:
    settings = load_settings()
    for name, entry in sorted(models.load_registry().items()):
        row = {
            "name": name,
            "state": _state(name, settings),
            "used_by": list(entry.used_by),
            "files": [f.name for f in entry.files],
            "license": entry.license,
            "registration": entry.registration,
            "path": str(models.model_path(name, settings)),
        }
        if args.json:
            print(json.dumps(row))
        else:
            how = "manual (registration)" if entry.manual else "fetch"
            print(f"{name:<11} {row['state']:<8} {','.join(entry.used_by):<22} {how:<22} "
                  f"{entry.license}")
    return 0


def _progress(file_name: str, done: int, total: int | None) -> None:
    size = f"/{total / 1e6:.1f}" if total else ""
    print(f"\r  {file_name}: {done / 1e6:.1f}{size} MB", end="", file=sys.stderr, flush=True)


def _fetch(args: argparse.Namespace) -> int:
    settings = load_settings()
    failed = 0
    for name in _selected(args.names, args.all):
        try:
            path = models.fetch_model(name, settings, on_progress=_progress)
        except models.ManualDownloadRequired as e:
            print(f"\n{e}", file=sys.stderr)
            failed += 1
            continue
        except models.ModelFetchError as e:
            print(f"\n{name}: FAILED: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"\n{name}: ready at {path}", file=sys.stderr)
    return 1 if failed else 0


def _verify(args: argparse.Namespace) -> int:
    settings = load_settings()
    bad = 0
    for name in _selected(args.names, False):
        report = models.verify_model(name, settings)
        if report.ok:
            print(f"{name}: OK")
            continue
        bad += 1
        for rel in report.missing:
            print(f"{name}: MISSING {rel} (get it with `{models.fetch_command(name)}`)")
        for problem in report.corrupt:
            print(f"{name}: CORRUPT {problem} (delete it and run `{models.fetch_command(name)}`)")
    return 1 if bad else 0


def _path(args: argparse.Namespace) -> int:
    print(models.model_path(_selected([args.name], False)[0], load_settings()))
    return 0
