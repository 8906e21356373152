"""Graceful stop on Ctrl-C and SIGTERM: the first signal asks the trainer to stop at the next RL-step boundary
(it saves a checkpoint there and marks the run interrupted), a second one aborts at once.

Cluster schedulers send SIGTERM before they kill a job, terminals send SIGINT: both are handled the same way.
Handlers are installed only in the main thread (Python delivers signals there; elsewhere ``signal.signal`` fails)
and the previous ones are restored on exit.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Context manager; ``signum`` is the first signal received (None while none came)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second signal: stop now, whatever is half-way
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this RL step and saving a checkpoint "
              "(press Ctrl-C again to abort now)", file=sys.stderr, flush=True)
