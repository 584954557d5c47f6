"""Honest figures, shared by every script in bench/ (docs/performance.md, "Honest figures").

Every bench prints, first, the CPU model and the flags that decide which figures apply to it (AVX2, AVX512_VNNI,
AMX), the core count and the load average before the run; last, the load average after. A ratio is only printed
through :meth:`Honest.ratio`:

- the 1-minute load average before the run above :data:`MAX_LOAD` (other jobs on the cores) refuses the run at once,
  before anything is measured (exit code :data:`REFUSED`), unless ``--force``; with ``--force`` every ratio line
  says it was measured on a loaded machine;
- ``--smoke`` (tests/test_bench_smoke.py, tiny sizes) skips the load check, and every ratio line says it is no
  figure.

Ratio lines start with ``ratio`` (``ratio: ...``, ``ratio [smoke run, not a figure]: ...``, ``ratio [--force: ...]:
...``) so a reader, or the smoke test, finds them.

Not a benchmark itself.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from fruits.model.cpu import cpu_info  # the benches' CPU description lives in the product

# Above this 1-minute load average before the run, the machine is not quiet enough for a ratio.
MAX_LOAD = 1.5
# Exit code of a bench that refused to run on a loaded machine.
REFUSED = 3


def load_text(load: tuple[float, float, float]) -> str:
    return " ".join(f"{value:.2f}" for value in load)


class Honest:
    """One bench run's honesty: the header, the load check, the ratio lines and the footer."""

    def __init__(self, force: bool = False, smoke: bool = False, out=None, load=os.getloadavg, cpuinfo: str | None = None):
        self.force, self.smoke, self.out, self._load = force, smoke, out or sys.stdout, load
        self.cpu = cpu_info(cpuinfo)
        self.load_before = tuple(round(v, 2) for v in load())
        self.loaded = self.load_before[0] > MAX_LOAD

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--force", action="store_true",
                            help=f"run and print ratios even when the load average before exceeds {MAX_LOAD} (said so)")
        parser.add_argument("--smoke", action="store_true",
                            help="tests/test_bench_smoke.py: no load check, ratio lines marked as no figure")

    @classmethod
    def start(cls, args: argparse.Namespace, **kwargs) -> "Honest":
        """The header; exits with :data:`REFUSED` when the machine is loaded and neither --force nor --smoke is given."""
        honest = cls(force=args.force, smoke=args.smoke, **kwargs)
        honest.header()
        honest.check()
        return honest

    def check(self, settle: float = 0, poll: float = 5, sleep=time.sleep) -> None:
        """Exit with :data:`REFUSED` when the machine is loaded and neither --force nor --smoke is given.

        ``settle`` > 0: measure the load again first, waiting up to that many seconds for it to fall to
        :data:`MAX_LOAD`: for a bench whose own set-up (before what it measures) loaded the cores. That load becomes
        the run's "before" (said on its own line), so the ratio lines and the JSON judge the measured part."""
        if settle > 0:
            deadline = time.monotonic() + settle
            while not (self.force or self.smoke) and self._load()[0] > MAX_LOAD and time.monotonic() < deadline:
                sleep(poll)
            self.load_before = tuple(round(v, 2) for v in self._load())
            self.loaded = self.load_before[0] > MAX_LOAD
            print(f"load average before the measured part (after up to {settle:.0f} s for the set-up's load to "
                  f"settle): {load_text(self.load_before)}" + (" (smoke run: not checked)" if self.smoke else ""),
                  file=self.out, flush=True)
        if self.loaded and not (self.force or self.smoke):
            print(f"refused: load average {self.load_before[0]:.2f} > {MAX_LOAD} before the run: other jobs share "
                  "the cores, so no ratio would mean anything. Run alone, or pass --force (the ratios then say so).",
                  file=self.out, flush=True)
            sys.exit(REFUSED)

    def header(self) -> None:
        print(self.cpu.describe(), file=self.out)
        print(f"load average before: {load_text(self.load_before)}"
              + (" (smoke run: not checked)" if self.smoke else ""), file=self.out, flush=True)

    def tag(self) -> str:
        if self.smoke:
            return " [smoke run, not a figure]"
        if self.loaded:
            return f" [--force: load average {self.load_before[0]:.2f} > {MAX_LOAD} before the run]"
        return ""

    def ratio(self, text: str) -> None:
        """Print one ratio line."""
        print(f"ratio{self.tag()}: {text}", file=self.out, flush=True)

    def finish(self) -> dict:
        """The footer; returns the figures for the bench's JSON."""
        after = tuple(round(v, 2) for v in self._load())
        print(f"load average after: {load_text(after)}", file=self.out, flush=True)
        return {"cpu": self.cpu.model, "cpu_class": self.cpu.cpu_class, "cpu_flags": self.cpu.flags,
                "cores": self.cpu.cores, "load_avg_before": self.load_before, "load_avg_after": after,
                "forced": self.force and self.loaded, "smoke": self.smoke}
