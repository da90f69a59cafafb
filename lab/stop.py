"""Stopping a run on request: SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 (what
SLURM sends before a time limit or a preemption; submitit's SIGUSR2 too).

The first signal only sets a flag. The training loop reads it after each
step (one attribute read), finishes the step, writes a checkpoint of where
it is (mid-task: the batch it stopped at) and ends with :class:`Stopped`, which
the command line turns into one line and exit status ``EXIT_STOPPED``. A
second Ctrl-C stops at once; the last checkpoint written is still there to
resume from.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Callable

EXIT_STOPPED = 75
"""Exit status of a run stopped by a signal with its checkpoint written (sysexits' EX_TEMPFAIL: try again)."""

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class Stopped(Exception):
    """A run stopped on request; the message says where it stopped and how to
    resume; ``status`` is the exit status (``EXIT_STOPPED``, or 130 when a second
    Ctrl-C stopped it at once, without a new checkpoint)."""

    def __init__(self, message: str, status: int = EXIT_STOPPED):
        super().__init__(message)
        self.status = status


class StopRequest:
    """The flag the signals set (``signum``), with the handlers it replaced kept for :meth:`restore`."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopRequest":
        """Handle the stop signals (from the main thread only: Python delivers signals there)."""
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def launcher_handler(self) -> Callable[[int, FrameType | None], Any] | None:
        """The handler the lab replaced for the signal that stopped it, when
        that is a Python function of an enclosing launcher (submitit's
        checkpoint-and-requeue), else None: the interpreter's defaults
        (terminate, KeyboardInterrupt) are not called, the lab's exit status
        stands for them. The caller calls it once the checkpoint is written."""
        previous = self._previous.get(self.signum) if self.signum is not None else None
        return previous if callable(previous) and previous is not signal.default_int_handler else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: at once
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""
