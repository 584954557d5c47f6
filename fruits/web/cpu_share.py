"""A share of one core that a kind of work may use on average: identify's budget in `fruits serve`.

Nice values alone do not keep a stream's throughput when identify clients ask in a loop: every answer brings the
next question, so identify is always runnable, and its HTTP parsing runs at the server's own priority
(bench/web.py beside). :class:`CpuShare` is a token bucket counted in CPU seconds of the whole process: it fills at
``share`` CPU seconds per wall second up to ``share * burst_seconds``, the process's CPU time drains it, and work
that asks for its turn waits while it is overdrawn. A lone user asking now and then never waits (the burst); eight
clients in a loop get ``share`` of a core between them, and the rest stays with the stream.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class CpuShare:
    """At most ``share`` of one core, on average, for the process while its work keeps asking.

    ``cpu_clock`` (the process's CPU seconds), ``clock`` (wall seconds) and ``sleep`` are seams for tests:

    >>> share = CpuShare(0.25, burst_seconds=4)
    >>> share.wait_turn()  # a full bucket: no wait
    0.0
    """

    def __init__(
        self,
        share: float,
        *,
        burst_seconds: float = 4.0,
        cpu_clock: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if share <= 0:
            raise ValueError(f"a CPU share must be above 0, not {share}")
        self.share = share
        self.capacity = share * burst_seconds
        self._cpu_clock, self._clock, self._sleep = cpu_clock, clock, sleep
        self._lock = threading.Lock()
        self._tokens = self.capacity
        self._cpu, self._wall = cpu_clock(), clock()

    def _refill(self) -> float:
        cpu, wall = self._cpu_clock(), self._clock()
        earned, spent = self.share * (wall - self._wall), cpu - self._cpu
        # Never more than the burst ahead, nor more than the burst behind: one costly moment (the model's
        # compilation at start-up, a large thumbnail) delays the next answers by at most burst_seconds.
        self._tokens = max(-self.capacity, min(self.capacity, self._tokens + earned - spent))
        self._cpu, self._wall = cpu, wall
        return self._tokens

    def wait_turn(self) -> float:
        """Wait until the process is within its share again; the seconds waited. Callers take turns (one lock)."""
        waited = 0.0
        with self._lock:
            while (tokens := self._refill()) < 0:
                # Then look again (the CPU clock ran meanwhile too); at least a millisecond, so that a debt too
                # small to count still moves the clock.
                pause = min(max(-tokens / self.share, 0.001), 0.5)
                self._sleep(pause)
                waited += pause
        return waited

    def forgive(self) -> None:
        """Start again with a full bucket (after the start-up's warm-up, which is no client's doing)."""
        with self._lock:
            self._refill()
            self._tokens = self.capacity
