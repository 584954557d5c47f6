"""What the live dashboard of ``fruits serve`` shows, computed server-side (no Spark).

- The status report of ``fruits status --json`` (:func:`fruits.reports.status.collect_status`): it reads whole columns of
  the tables, so it is computed again only when one of them (or the newest PCA model, or the stream's progress)
  changed, and then at most once per half ``refresh_seconds`` however many pages poll it. Between two computations
  the ages it reports move on with the clock. Whether a table changed is a cheap question: the server keeps each
  table open and reads only the commits added to its log since (``DeltaTable.update_incremental``).
- Images/s over the last ``window_seconds``: a ring buffer of samples of the stream's progress file
  (``HOME/status/stream-progress.json``, rewritten after each micro-batch that read files). Its ``files_since_start``
  counter is cumulative, so the rate between two samples counts every micro-batch, even those the sampler missed.
- The last micro-batches seen in that file, the quarantine reasons with their counts, and the newest PCA plots.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from datetime import datetime, timezone
from typing import Any

from fruits.config import Config
from fruits.home.home import Home
from fruits.home.pca_store import latest_record
from fruits.home.filesystem import FileSystem, read_json
from fruits.home.tables import Table
from fruits.reports.status import age_seconds, collect_status
from fruits.web.home_files import HomeFiles


def quarantine_reasons(quarantine: Table) -> dict[str, int]:
    """Each quarantine reason and how many rows have it, most frequent first."""
    reasons = quarantine.read(["reason"]).column("reason").to_pylist()
    return dict(Counter(reasons).most_common())


def aged(report: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """A status report computed ``elapsed`` seconds ago, its ages as they are now (nothing else can have changed)."""
    report = {**report}
    for section, stamp in (("last_refit", "fitted_at"), ("stream", "at")):
        if report.get(section):
            report[section] = {**report[section], "age_seconds": age_seconds(report[section][stamp])}
    backlog = report.get("backlog")
    if backlog and backlog.get("oldest_pending_age_seconds") is not None:
        waited = round(backlog["oldest_pending_age_seconds"] + elapsed, 1)
        report["backlog"] = {**backlog, "oldest_pending_age_seconds": waited}
    return report


# The figures of one micro-batch, as the stream writes them to its progress file.
BATCH_FIELDS = ("batch", "files", "seconds", "images_per_s", "at")


class ProgressSampler:
    """Ring buffer of ``(time, files_since_start)`` samples of the stream's progress file, and of the distinct
    micro-batches it recorded."""

    def __init__(
        self, config: Config, window_seconds: float, sample_seconds: float, batches: int = 12, *,
        files: FileSystem | None = None,
    ) -> None:
        self.config = config
        self.files = files or Home.from_config(config).files  # where the progress file is read
        self.window = float(window_seconds)
        self.samples: deque[tuple[float, int]] = deque(maxlen=int(self.window / max(sample_seconds, 0.1)) + 2)
        self.batches: deque[dict[str, Any]] = deque(maxlen=batches)
        self._lock = threading.Lock()

    def sample(self, now: float | None = None) -> None:
        """Read the progress file once and record what it says."""
        try:
            progress = read_json(self.files, self.config.stream_progress)
        except (OSError, ValueError):  # being rewritten, or not there yet
            progress = None
        now = time.time() if now is None else now
        with self._lock:
            if progress is None:  # nothing new: the counter stays where it was
                _, files = self.samples[-1] if self.samples else (now, 0)
                self.samples.append((now, files))
                return
            self.samples.append((now, int(progress.get("files_since_start") or 0)))
            batch = {key: progress.get(key) for key in BATCH_FIELDS}
            if not self.batches or self.batches[-1] != batch:
                self.batches.append(batch)

    def rates(self, bucket_seconds: float = 5.0, now: float | None = None) -> list[dict[str, float]]:
        """Images/s per ``bucket_seconds`` over the window: ``[{"t": unix seconds, "images_per_s": r}]``, oldest first.
        A counter that went down is a restarted stream: its new value is what the new run read since."""
        now = time.time() if now is None else now
        with self._lock:
            samples = [s for s in self.samples if s[0] >= now - self.window - bucket_seconds]
        files: dict[int, int] = {}
        for (_, before), (t, after) in zip(samples, samples[1:]):
            read = after - before if after >= before else after
            bucket = int(t // bucket_seconds)
            files[bucket] = files.get(bucket, 0) + read
        if not samples:
            return []
        first, last = int(samples[0][0] // bucket_seconds), int(now // bucket_seconds)
        points = []
        for bucket in range(first, last + 1):
            elapsed = bucket_seconds if bucket < last else max(now - bucket * bucket_seconds, 1.0)
            points.append({"t": bucket * bucket_seconds, "images_per_s": round(files.get(bucket, 0) / elapsed, 2)})
        return points

    def run(self, stop: threading.Event, every: float) -> None:
        """Sample every ``every`` seconds until ``stop`` is set (the server's background thread)."""
        while not stop.is_set():
            self.sample()
            stop.wait(every)


class TableVersions:
    """The current version of each of a home's tables, each kept open by its handle and brought up to date
    incrementally."""

    def __init__(self, tables: list[Table]) -> None:
        self.tables = tables

    def current(self) -> tuple:
        versions = []
        for table in self.tables:
            try:
                loaded = table.latest()
            except Exception:  # unreadable for now (being created, storage hiccup): count it as changed
                table.forget()
                versions.append(object())
                continue
            versions.append(None if loaded is None else loaded.version())
        return tuple(versions)


class Dashboard:
    """The dashboard's data, shared by every client of one server process."""

    def __init__(self, home: Home, files: HomeFiles) -> None:
        web = home.config.web
        self.home, self.config, self.files = home, home.config, files
        self.refresh = min(web.refresh_seconds, 2.0)
        self.sampler = ProgressSampler(home.config, web.window_seconds, web.sample_seconds, files=home.files)
        self.quarantine = home.quarantine
        self.versions = TableVersions([home.ledger, home.features, self.quarantine, home.pca])
        self._status: tuple[float, tuple, dict[str, Any]] | None = None  # (computed at, state key, report)
        self._reasons: tuple[Any, dict[str, int]] = (None, {})
        self._lock = threading.Lock()
        self.computations = 0  # how many times the report was computed (tests, bench)

    def state(self) -> tuple:
        """What the report depends on: the tables' versions, the active model's table, the newest PCA model, the
        stream's last progress."""
        home = self.home
        refit = latest_record(home.pca_store) or {}
        try:
            progress = read_json(home.files, self.config.stream_progress) or {}
        except (OSError, ValueError):  # being rewritten: count it as changed
            progress = {"unreadable": time.monotonic()}
        features = home.features_table
        if self.versions.tables[1].location != features:  # a switch made another model active: watch its table
            self.versions.tables[1] = home.features
        return self.versions.current(), features, refit.get("version"), progress.get("at"), progress.get("batch")

    def status(self) -> dict[str, Any]:
        """:func:`collect_status`, recomputed when what it reads changed (at most once per half refresh interval,
        one computation at a time); otherwise the last report with its ages brought up to now."""
        with self._lock:
            now = time.monotonic()
            if self._status is not None and now - self._status[0] < self.refresh * 0.5:
                return self._status[2]
            key = self.state()
            if self._status is None or key != self._status[1]:
                self._status = (now, key, collect_status(self.home))
                self.computations += 1
                return self._status[2]
            computed, _, report = self._status
            return aged(report, now - computed)

    def reasons(self, quarantine_version: Any) -> dict[str, int]:
        """Quarantine reasons with counts, recounted only when the quarantine table has a new version."""
        if self._reasons[0] != quarantine_version or quarantine_version is None:
            self._reasons = (quarantine_version, quarantine_reasons(self.quarantine))
        return self._reasons[1]

    def snapshot(self) -> dict[str, Any]:
        """Everything the page draws, as one JSON-able object."""
        self.sampler.sample()
        status = self.status()
        refit = status.get("last_refit") or {}
        plots = [
            {"name": name, "url": self.files.plot_url(refit["version"], name)}
            for name in refit.get("plots") or []
        ]
        return {
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "refresh_seconds": self.refresh,
            "status": status,
            "backlog": status.get("backlog"),  # present once the status report has it
            "throughput": self.sampler.rates(),
            "batches": list(reversed(self.sampler.batches)),
            "quarantine_reasons": self.reasons(status["quarantine"].get("version")),
            "pca": {"version": refit.get("version"), "k": refit.get("k"), "plots": plots},
        }
