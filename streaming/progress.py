"""What the stream tells people while it runs: one log line per featurized chunk, and the same figures in
``HOME/status/stream-progress.json`` for ``fruits status`` and the web dashboard."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from fruits.home.filesystem import FileSystem
from fruits.timing import Phases

log = logging.getLogger("fruits.stream")


@dataclass
class Progress:
    """Counts the files given an outcome since the stream started, and reports each chunk: a "batch" here is one
    featurized chunk (numbered from 0 at each start), part of Spark's micro-batch ``micro_batch``."""

    store: FileSystem | None = None  # where ``progress_file`` is written (the home's file system)
    progress_file: str | None = None
    files: int = 0
    batches: int = 0
    phases: Phases = field(default_factory=Phases)
    # The micro-batch the sink ended early because a stop was requested (:class:`fruits.streaming.sink.StopRequested`).
    stopped_in: int | None = None
    # The model that replaces the stream's, once the sink found its features table sealed by a switch
    # (:class:`fruits.home.tables.TableSealed`): the stream then goes on with that model.
    sealed_by: int | None = None

    def chunk_done(self, micro_batch: int, files: int, seconds: float) -> None:
        """Log and publish one chunk's figures (``files`` outcome rows committed in ``seconds``)."""
        self.files += files
        rate = round(files / seconds, 1) if seconds else None
        phases = self.phases.take()
        log.info(
            "batch %d: %d files in %.2f s (%s images/s); %d files since start (micro-batch %d); phases %s",
            self.batches, files, seconds, rate, self.files, micro_batch, json.dumps(phases),
        )
        figures = {
            "batch": self.batches, "micro_batch": micro_batch, "files": files, "seconds": round(seconds, 3),
            "images_per_s": rate, "files_since_start": self.files, "at": datetime.now(timezone.utc).isoformat(),
            "phases_seconds": phases,
        }
        self.batches += 1
        if not self.progress_file or self.store is None:
            return
        try:
            self.store.write(self.progress_file, json.dumps(figures).encode("utf-8"))
        except Exception as exc:  # status figures are a convenience: never let them disturb the stream
            log.warning("could not write %s: %s", self.progress_file, exc)
