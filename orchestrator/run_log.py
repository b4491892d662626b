"""Keeps a failed run's log readable: a parameter or stage error is logged once, as one line.

The flow logs such an error itself (one ERROR line, the traceback at DEBUG) and ends the run
Failed; Prefect's engine would then log the same error again with a traceback when the run's
process exits. This filter drops those repeats, for these errors only.
"""

import logging

#: Exception types the flow reports itself, by class name (no import cycle with the flow).
REPORTED_ERRORS = ("ParameterError", "StageCallError")
_ENGINE_REPEATS = ("Engine execution exited with unexpected exception",
                   "Encountered exception during execution")  # fmt: skip


class DropReportedTracebacks(logging.Filter):
    """Drops the engine's traceback records of errors that the flow already logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        reported = exc is not None and type(exc).__name__ in REPORTED_ERRORS
        return not (reported and str(record.msg).startswith(_ENGINE_REPEATS))


def install() -> None:
    """Adds the filter to Prefect's flow-run logger (once)."""
    logger = logging.getLogger("prefect.flow_runs")
    if not any(isinstance(f, DropReportedTracebacks) for f in logger.filters):
        logger.addFilter(DropReportedTracebacks())
