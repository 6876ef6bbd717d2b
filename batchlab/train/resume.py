"""Stopping without losing work: a resume checkpoint is written as often as its cost allows
(ResumeClock), and on SIGTERM at the next step boundary (sigterm_event), after which training
stops with Interrupted."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator


# Why the resume interval adapts: a fixed one (120 s) lost most of a short run when it was
# killed, and a short fixed one would spend a large model's run writing checkpoints. A resume
# checkpoint is due once the time since the last save exceeds max(RESUME_FLOOR_S,
# RESUME_COST_FACTOR x how long the last save took), capped at `checkpoints.resume_every_s`:
# saving costs at most about 1/RESUME_COST_FACTOR (5 %) of the time, and a killed small run
# loses a few seconds. Any save of every member (log-spaced or resume) counts.
RESUME_FLOOR_S = 2.0
RESUME_COST_FACTOR = 20.0
clock = time.perf_counter  # the resume interval, and the loop's wall times: a test may replace it here and there


class ResumeClock:
    """When the next resume checkpoint is due (see RESUME_FLOOR_S)."""

    def __init__(self, most_s: float):
        self.most_s, self.last, self.cost = most_s, clock(), 0.0

    def interval(self) -> float:
        return min(self.most_s, max(RESUME_FLOOR_S, RESUME_COST_FACTOR * self.cost))

    def due(self) -> bool:
        return clock() - self.last > self.interval()

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        start = clock()
        yield
        self.last = clock()
        self.cost = self.last - start


class Interrupted(RuntimeError):
    """SIGTERM stopped training at a step boundary, after every unfinished member wrote a resume checkpoint."""


@contextlib.contextmanager
def sigterm_event() -> Iterator[threading.Event]:
    """An event that SIGTERM sets while the body runs, instead of killing the process.

    A cluster sends SIGTERM before SIGKILL (SLURM at its time limit, KillWait seconds before);
    training then saves at the next step boundary and stops, and the retried job resumes there.
    Only the main thread may set a signal handler: elsewhere the event is never set.
    """
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.set())
    try:
        yield received
    finally:  # None: a handler not set from Python, which cannot be put back; the default is the nearest
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
