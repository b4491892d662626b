"""Flow run names: keep the name a person typed; otherwise the video's stem and a time stamp.

Prefect gives every run a random two-word name (`witty-cat`, from the coolname word lists) when
nobody typed one, and the UI's run form pre-fills such a name too; those are replaced.
"""

import re
from datetime import datetime
from functools import cache
from pathlib import Path


@cache
def _words(list_name: str) -> frozenset[str]:
    """Every word of a coolname list (nested lists resolved)."""
    from coolname.data import config

    entry = config[list_name]
    if "words" in entry:
        return frozenset(entry["words"])
    return frozenset().union(*(_words(name) for name in entry.get("lists", [])))


def is_generated_name(name: str) -> bool:
    """True for Prefect's random `adjective-animal` names."""
    first, _, rest = name.partition("-")
    if not re.fullmatch(r"[a-z]+(-[a-z]+)+", name or ""):
        return False
    try:
        return first in _words("adj_any") and rest in _words("subj")
    except (ImportError, KeyError):
        return re.fullmatch(r"[a-z]+-[a-z]+", name) is not None


def video_run_name(video: str, now: datetime | None = None) -> str:
    """`<video stem>-<MMDD-HHMMSS>`, so that runs of the same video can be told apart."""
    stem = Path(video.rstrip("/")).stem or "video"
    return f"{stem}-{(now or datetime.now()):%m%d-%H%M%S}"


def process_video_run_name() -> str:
    """The `process-video` run's name (Prefect calls this when the run starts)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    current = context.flow_run.name if context and context.flow_run else ""
    if current and not is_generated_name(current):
        return current
    params = (context.parameters or {}).get("params") if context else None
    video = getattr(params, "video", None) or (params or {}).get("video", "video")
    return video_run_name(str(video))
