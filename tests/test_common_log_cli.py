"""Structured log lines and the `nlfpipe` command line."""

import json
import logging

import pytest

from services.common.cli import build_parser, main
from services.common.log import configure_logging, log_event, run_id_var


@pytest.fixture
def restored_logging():
    """configure_logging replaces the root handlers with one bound to this test's captured
    stderr, which is closed after the test; later records (from any thread) would fail on it
    with `ValueError: I/O operation on closed file`."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_every_log_line_is_json_with_stage_and_run_id(
    capsys: pytest.CaptureFixture, restored_logging
) -> None:
    configure_logging("fitting", "INFO", "json")
    token = run_id_var.set("run-42")
    try:
        log_event(logging.getLogger("x"), "fit done", tracks=3, seconds=1.5)
    finally:
        run_id_var.reset(token)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["stage"] == "fitting"
    assert line["run_id"] == "run-42"
    assert line["event"] == "fit done"
    assert (line["tracks"], line["seconds"]) == (3, 1.5)


def test_health_of_nothing_is_unreachable(capsys: pytest.CaptureFixture) -> None:
    assert main(["health", "127.0.0.1:1", "--timeout", "0.5"]) == 1
    assert capsys.readouterr().out.strip() == "UNREACHABLE"


def test_serve_rejects_unknown_stage(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "dance"])
    assert "invalid choice" in capsys.readouterr().err
