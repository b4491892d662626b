"""Downloads of http(s) URLs and YouTube videos through yt-dlp.

YouTube follows the reference (`download_yt.sh`): MP4 video of at most `max_height` lines, no
AV1, merged with M4A audio. Other URLs go through the same selector, whose filters let formats of
unknown height or codec pass, so yt-dlp's generic extractor can fetch a plain media file.
"""

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import imageio_ffmpeg
import yt_dlp

from services.common.errors import InvalidInput, NlfpipeError

logger = logging.getLogger(__name__)

YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
_YOUTUBE_HOSTS = {
    "youtube.com",
    "www.youtube.com",
    "m.youtube.com",
    "music.youtube.com",
    "youtu.be",
    "www.youtube-nocookie.com",
    "youtube-nocookie.com",
}
_YOUTUBE_PATH_PREFIXES = ("/shorts/", "/embed/", "/live/", "/v/")
SOCKET_TIMEOUT_S = 30.0

ByteProgressFn = Callable[[int, int], None]


def youtube_url(video_id: str) -> str:
    """The canonical watch URL of a YouTube video id."""
    return f"https://www.youtube.com/watch?v={video_id}"


def youtube_id_of_url(url: str) -> str | None:
    """The video id of a YouTube URL; None for other URLs; InvalidInput for a YouTube URL
    that names no video."""
    parsed = urlparse(url)
    if (parsed.hostname or "").lower() not in _YOUTUBE_HOSTS:
        return None
    candidates = parse_qs(parsed.query).get("v", [])
    if parsed.hostname.lower() == "youtu.be":
        candidates.append(parsed.path.strip("/"))
    candidates += [
        parsed.path[len(prefix) :].split("/")[0]
        for prefix in _YOUTUBE_PATH_PREFIXES
        if parsed.path.startswith(prefix)
    ]
    for candidate in candidates:
        if YOUTUBE_ID.match(candidate):
            return candidate
    raise InvalidInput(f"source {url!r} is a YouTube URL but names no video id (11 characters)")


def format_selector(max_height: int) -> str:
    """yt-dlp format selection: MP4 video of at most max_height lines, no AV1, plus M4A audio."""
    video = f"[height<=?{max_height}][vcodec!^=?av01]"
    return (
        f"bestvideo[ext=mp4]{video}+bestaudio[ext=m4a]"
        f"/best[ext=mp4]{video}/bestvideo[ext=mp4]{video}/best{video}"
    )


class _Logger:
    """Routes yt-dlp's messages into logging instead of stdout."""

    def debug(self, msg: str) -> None:
        logger.debug("yt-dlp: %s", msg)

    info = debug

    def warning(self, msg: str) -> None:
        logger.warning("yt-dlp: %s", msg)

    def error(self, msg: str) -> None:
        logger.error("yt-dlp: %s", msg)


def ytdlp_options(dest_dir: Path, max_height: int, on_bytes: ByteProgressFn) -> dict[str, Any]:
    """The yt-dlp options of a download into dest_dir (the `download_yt.sh` flags, as a dict)."""

    def hook(status: dict[str, Any]) -> None:
        if status.get("status") == "downloading":
            total = status.get("total_bytes") or status.get("total_bytes_estimate") or 0
            on_bytes(int(status.get("downloaded_bytes") or 0), int(total))

    return {
        "format": format_selector(max_height),
        "merge_output_format": "mp4",
        "outtmpl": str(dest_dir / "source.%(ext)s"),
        "ffmpeg_location": imageio_ffmpeg.get_ffmpeg_exe(),
        "prefer_ffmpeg": True,
        "updatetime": False,
        "noplaylist": True,
        "playlist_items": "1",
        "overwrites": True,
        "continuedl": False,
        "noprogress": True,
        "quiet": True,
        "no_warnings": True,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "retries": 3,
        "logger": _Logger(),
        "progress_hooks": [hook],
    }


def download(url: str, dest_dir: Path, max_height: int, on_bytes: ByteProgressFn) -> Path:
    """Downloads one video into dest_dir and returns its path; InvalidInput when it fails.

    `on_bytes(done, total)` is called while downloading and may raise a domain error (such as
    Cancelled) to abort; that error is re-raised.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    with yt_dlp.YoutubeDL(ytdlp_options(dest_dir, max_height, on_bytes)) as ydl:
        try:
            info = ydl.extract_info(url, download=True)
        except yt_dlp.utils.DownloadError as e:
            cause = (e.exc_info or (None, None))[1]
            if isinstance(cause, NlfpipeError):
                raise cause from e
            reason = re.sub(r"^ERROR:\s*", "", str(e))
            raise InvalidInput(f"source {url!r} could not be downloaded: {reason}") from e
    files = [Path(d["filepath"]) for d in (info or {}).get("requested_downloads", [])]
    files = [f for f in files if f.is_file()] or sorted(dest_dir.glob("source.*"))
    if not files:
        raise InvalidInput(f"source {url!r} could not be downloaded: yt-dlp produced no file")
    return files[0]
