"""Stage progress inside this process: tasks emit events, listeners (the terminal) show them."""

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


@dataclass(frozen=True)
class StageEvent:
    """One progress event of a stage call."""

    stage: str
    done: int
    total: int
    message: str
    finished: bool = False
    failed: bool = False


Listener = Callable[[StageEvent], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


def add_listener(listener: Listener) -> None:
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def emit(
    stage: str, done: int, total: int, message: str = "", *, finished: bool = False,
    failed: bool = False,
) -> None:
    """Hands an event to every listener; a failing listener never breaks the stage."""
    event = StageEvent(stage, done, total, message, finished, failed)
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        with contextlib.suppress(Exception):  # display problems must not stop the pipeline
            listener(event)


class TerminalProgress:
    """Rich progress bars, one per stage, fed by stage events; use as a context manager."""

    def __init__(self, console: Console | None = None):
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[stage]:<13}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            transient=False,
        )
        self._bars: dict[str, TaskID] = {}

    def __enter__(self) -> "TerminalProgress":
        self.progress.start()
        add_listener(self)
        return self

    def __exit__(self, *exc) -> None:
        remove_listener(self)
        self.progress.stop()

    def __call__(self, event: StageEvent) -> None:
        bar = self._bars.get(event.stage)
        if bar is None:
            bar = self.progress.add_task("", total=None, stage=event.stage, note="")
            self._bars[event.stage] = bar
        if event.finished:
            task = self.progress.tasks[bar]
            total = task.total or 1
            self.progress.update(bar, total=total, completed=total, note=event.message)
            self.progress.stop_task(bar)
        elif event.failed:
            self.progress.update(bar, note=f"[red]{event.message}")
        else:
            self.progress.update(
                bar,
                total=event.total or None,
                completed=event.done,
                note=event.message[:60],
            )
