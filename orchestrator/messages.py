"""Messages of `nlfpipe run` in the command line's terms: flags, not flow field names."""

import re

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
