"""Seconds spent per named phase of a piece of work: the stream's chunks (its progress line) and the refit's steps
(its version's metadata) are timed the same way."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class Phases:
    """Seconds spent per named phase (a phase timed twice adds up)."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the time the block takes to phase ``name``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def take(self) -> dict[str, float]:
        """The phases' seconds so far (rounded to ms), and start again from zero."""
        taken = {name: round(seconds, 3) for name, seconds in self.seconds.items()}
        self.seconds.clear()
        return taken
