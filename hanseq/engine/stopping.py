"""Stopping training on a signal without losing it: SIGTERM (a pod evicted, ``kill``) or
Ctrl-C ends the loop after the step that is running, which is checkpointed, and the same
command resumes from there. Runs of hours on machines that can be taken away lose at most
one step instead of everything since the last validation."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any


class TrainingInterrupted(Exception):
    """A signal stopped training; its last step is checkpointed."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        super().__init__(
            f"{signal.Signals(signum).name}: stopped at step {step}, checkpoint {checkpoint}; "
            "the same command resumes from it"
        )
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class StopRequest:
    """While open, SIGTERM and SIGINT ask the training loop to stop after its step (the
    first one only: a second signal acts as it would without this)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._before: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # only it may set handlers
            self._before = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._before.items():
            signal.signal(s, handler)
        self._before = {}

    def __exit__(self, *exc: object) -> None:
        self._restore()
