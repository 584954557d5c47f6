"""The CPU share that keeps identify clients asking in a loop from starving a stream (fruits/web/cpu_share.py): on
clocks the test moves itself, so the figures are exact."""

import pytest

from fruits.web.cpu_share import CpuShare

pytestmark = pytest.mark.fast


class Clocks:
    """A wall clock and a process CPU clock that only move when the test (or the share's sleep) moves them."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def sleep(self, seconds: float) -> None:
        self.wall += seconds

    def work(self, cpu_seconds: float) -> None:
        """Work on one core: CPU time and wall time advance together."""
        self.cpu += cpu_seconds
        self.wall += cpu_seconds

    def share(self, share: float, burst_seconds: float) -> CpuShare:
        return CpuShare(share, burst_seconds=burst_seconds, cpu_clock=lambda: self.cpu, clock=lambda: self.wall,
                        sleep=self.sleep)


def test_a_lone_request_never_waits_and_work_asking_in_a_loop_gets_its_share_of_a_core():
    clocks = Clocks()
    share = clocks.share(0.25, burst_seconds=4)
    # A burst: a full bucket holds 1 CPU second; 10 requests of 50 ms each are served at once.
    waits = []
    for _ in range(10):
        waits.append(share.wait_turn())
        clocks.work(0.05)
    assert waits == [0.0] * 10

    # Clients asking in a loop: 2,000 requests of 10 ms of CPU each.
    started_wall, started_cpu = clocks.wall, clocks.cpu
    for _ in range(2000):
        share.wait_turn()
        clocks.work(0.01)
    used = (clocks.cpu - started_cpu) / (clocks.wall - started_wall)
    assert 0.24 <= used <= 0.25 + 1.0 / (clocks.wall - started_wall)  # the share, plus at most what the bucket held

    # An idle minute fills the bucket again, never beyond the burst: the next 20 requests of 50 ms wait 0 s only
    # for the first 1 CPU second's worth of them.
    clocks.sleep(60)
    waits = []
    for _ in range(30):
        waits.append(share.wait_turn())
        clocks.work(0.05)
    assert waits[:20] == [0.0] * 20 and sum(waits[20:]) > 0


def test_one_costly_moment_delays_the_next_request_by_the_burst_at_most():
    clocks = Clocks()
    share = clocks.share(0.25, burst_seconds=4)
    clocks.work(120)  # two minutes of CPU at once (say, a huge thumbnail)
    assert share.wait_turn() == pytest.approx(4.0)  # the floor: a full bucket behind, made up in burst_seconds
    clocks.work(30)  # the model compiled at start-up: forgiven, the next client does not pay for it
    share.forgive()
    assert share.wait_turn() == 0.0


def test_a_share_of_zero_or_less_is_refused():
    with pytest.raises(ValueError):
        CpuShare(0)
