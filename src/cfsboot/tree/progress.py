"""A bytes progress bar on stderr for long scans (rich), shown only on a TTY."""

from __future__ import annotations

from typing import Any


class ByteProgress:
    """A bytes progress bar on stderr (rich), or nothing when disabled.

    Called from several threads; rich's Progress locks internally.  rich is
    imported only when a bar is shown, to keep start-up fast in builds.
    """

    def __init__(self, enabled: bool, description: str) -> None:
        self._bar: Any = None
        self._task: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), TimeRemainingColumn(),
                             console=Console(stderr=True), transient=True)
        self._task = self._bar.add_task(description, total=0)
        self._bar.start()

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def add_total(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=self._bar.tasks[0].total + n)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
