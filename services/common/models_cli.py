"""`nlfpipe models list|fetch|push|verify|path`: manage the model cache (docs/models.md)."""

import argparse
import json
import sys
from dataclasses import replace

from services.common import models
from services.common.settings import Settings, load_settings
from services.common.store import ArtifactStore, open_store


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
    fetch.add_argument(
        "--to-store",
        action="store_true",
        help="then upload the files to the artifact store (models/NAME/)",
    )
    fetch.set_defaults(func=_fetch)

    push = sub.add_parser("push", help="upload cached models to the artifact store (models/NAME/)")
    push.add_argument("names", nargs="*", metavar="NAME", help="models to upload")
    push.add_argument("--all", action="store_true", help="every model of the registry")
    push.set_defaults(func=_push)

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
    """ready, missing or corrupt in the local cache (never copies anything from the store)."""
    try:
        models.require_model(name, replace(settings, model_source="local"))
    except models.ModelNotReady:
        return "missing" if models.verify_model(name, settings).missing else "corrupt"
    return "ready"


def _store_if_configured(settings: Settings) -> ArtifactStore | None:
    """The store, when models may live there (NLFPIPE_MODEL_SOURCE=store or NLFPIPE_STORE=s3)."""
    if settings.model_source != "store" and settings.store_backend != "s3":
        return None
    try:
        return open_store(settings)
    except models.STORE_ERRORS as e:
        raise SystemExit(
            f"cannot open the artifact store ({type(e).__name__}: {e}); check NLFPIPE_STORE, "
            "NLFPIPE_STORE_ROOT, NLFPIPE_S3_ENDPOINT and the other S3 settings"
        ) from e


def _list(args: argparse.Namespace) -> int:
    settings = load_settings()
    store = _store_if_configured(settings)
    if not args.json:
        stored = f"{'store':<14} " if store else ""
        print(f"{'model':<11} {'state':<8} {stored}{'used by':<22} {'how to get it':<22} licence")
    for name, entry in sorted(models.load_registry().items()):
        row = {
            "name": name,
            "state": _state(name, settings),
            "store": models.store_state(name, store) if store else None,
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
            stored = f"store:{row['store']:<8} " if store else ""
            print(
                f"{name:<11} {row['state']:<8} {stored}{','.join(entry.used_by):<22} "
                f"{how:<22} {entry.license}"
            )
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
        if args.to_store and not _push_one(name, settings):
            failed += 1
    return 1 if failed else 0


def _push_one(name: str, settings: Settings) -> bool:
    """Uploads one model and says where it went; False (after saying why) when it failed."""
    try:
        infos = models.push_model(name, settings)
    except models.ModelFetchError as e:
        print(f"{name}: NOT UPLOADED: {e}", file=sys.stderr)
        return False
    for info in infos:
        print(
            f"{name}: uploaded {info.uri} ({info.size_bytes} bytes, sha256 {info.sha256})",
            file=sys.stderr,
        )
    return True


def _push(args: argparse.Namespace) -> int:
    settings = load_settings()
    results = [_push_one(name, settings) for name in _selected(args.names, args.all)]
    return 0 if all(results) else 1


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
