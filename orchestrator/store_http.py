"""A read-only HTTP server for the local folder store, on loopback only.

Browsers (and so the Prefect UI) cannot open `file://` links; the local stack serves the store
with this server so that every artifact link is `http://127.0.0.1:<port>/<key>`. Each object is
sent with the media type recorded in the store's metadata (else one guessed from its name), and
`?name=<file name>` sets the name a browser saves it under. Only GET and HEAD exist; the
store's metadata and temporary files are not served.

    python -m orchestrator.store_http --root .nlfpipe/store --port 0 --port-file F
"""

import argparse
import json
import mimetypes
import shutil
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LOOPBACK = "127.0.0.1"
_CHUNK = 1 << 20


def media_type_of(root: Path, key: str) -> str:
    """The object's recorded media type, else a guess from its name, else octet-stream."""
    meta = root / ".meta" / f"{key}.json"
    try:
        recorded = json.loads(meta.read_text()).get("media_type", "")
    except (OSError, json.JSONDecodeError):
        recorded = ""
    if recorded and recorded != "application/octet-stream":
        return recorded
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def resolve_key(root: Path, url_path: str) -> Path | None:
    """The file a URL path names inside `root`, or None (outside it, hidden, or missing)."""
    key = unquote(url_path).lstrip("/")
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or p.startswith((".meta", ".tmp-")) for p in parts):
        return None
    path = (root / key).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


class _Handler(BaseHTTPRequestHandler):
    server_version = "nlfpipe-store"
    root: Path

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._send(body=False)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._send(body=True)

    def _send(self, body: bool) -> None:
        url = urlsplit(self.path)
        path = resolve_key(self.root, url.path)
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND, "no such object in the store")
            return
        key = path.relative_to(self.root).as_posix()
        name = (parse_qs(url.query).get("name") or [""])[0]
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", media_type_of(self.root, key))
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Cache-Control", "no-cache")
        if name:
            self.send_header(
                "Content-Disposition", f"inline; filename*=UTF-8''{quote(Path(name).name)}"
            )
        self.end_headers()
        if body:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, self.wfile, _CHUNK)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def make_server(root: Path, port: int = 0) -> ThreadingHTTPServer:
    """A server (not yet serving) for the store at `root`, bound to loopback."""
    handler = type("StoreHandler", (_Handler,), {"root": Path(root).resolve()})
    server = ThreadingHTTPServer((LOOPBACK, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(root: Path, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Serves the store from a daemon thread; returns the server and its base URL."""
    server = make_server(root, port)
    threading.Thread(target=server.serve_forever, name="nlfpipe-store-http", daemon=True).start()
    return server, base_url(server)


def base_url(server: ThreadingHTTPServer) -> str:
    return f"http://{LOOPBACK}:{server.server_address[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the local store read-only on loopback.")
    parser.add_argument("--root", type=Path, required=True, help="the store's folder")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    server = make_server(args.root, args.port)
    if args.port_file:
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(str(server.server_address[1]))
        tmp.replace(args.port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
