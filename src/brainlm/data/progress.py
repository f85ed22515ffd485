"""A progress bar for long loops over recordings (``prepare``, ``simulate``)."""

from __future__ import annotations

from collections.abc import Callable

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class ProgressBar:
    """A rich progress bar when ``enabled``, a no-op otherwise.

    ``with ProgressBar(True, "cleaning recordings", n) as advance:`` gives a function to call once
    per finished item (``total`` items).
    """

    def __init__(self, enabled: bool, what: str, total: int):
        self.enabled, self.what, self.total = enabled, what, total
        self._bar: Progress | None = None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn())
        self._bar.__enter__()
        task = self._bar.add_task(self.what, total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc) -> bool:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
        return False
