"""Structured logging: one line per event, with the stage and the run id in every line."""

import contextvars
import json
import logging
import sys
import time

_process_stage = "-"
run_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("nlfpipe_run_id", default="-")

RUN_ID_METADATA_KEY = "x-nlfpipe-run-id"


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.stage = _process_stage
        record.run_id = run_id_var.get()
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "stage": getattr(record, "stage", "-"),
            "run_id": getattr(record, "run_id", "-"),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        level = record.levelname.lower()
        head = f"{self.formatTime(record)} {level:7s} [{record.stage} {record.run_id}]"
        text = f"{head} {record.getMessage()} {fields}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(stage: str, level: str = "INFO", fmt: str = "json") -> None:
    """Sends all records of this process to stderr as one line each."""
    global _process_stage
    _process_stage = stage
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def log_event(
    logger: logging.Logger, event: str, level: int = logging.INFO, **fields: object
) -> None:
    """Logs one event with structured fields (they become JSON keys)."""
    logger.log(level, event, extra={"fields": fields})
