"""``fruits retry``: send quarantined files through the stream again (no JVM).

Every quarantine verdict can be undone. For each file version whose current outcome is a quarantine row that
matches, one ledger row asks for its next attempt, read from where its original is kept (``HOME/quarantine/...``,
or landing): the running stream (or the next one) gives that attempt exactly one outcome, which supersedes the
quarantine row. A retry asked twice (two commands at once) is still one attempt, decided once.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import pyarrow.compute as pc

from fruits.home.filesystem import FileSystem, UnsupportedLocation
from fruits.home.home import Home
from fruits.home.files import current_outcomes
from fruits.home.ledger import record_retries
from fruits.home.uris import local_path


def _there(files: FileSystem, uri: str | None) -> bool:
    if not uri:
        return False
    try:
        return files.exists(uri)
    except UnsupportedLocation:  # a store this command cannot look at (hdfs://): the stream will find out
        return True


def _matches(row: dict[str, Any], reason: str | None, path_glob: str | None, landing: str) -> bool:
    if reason and reason.lower() not in (row["reason"] or "").lower() and reason != row["cause"]:
        return False
    if path_glob:
        relative = row["path"][len(landing.rstrip("/")) + 1 :] if row["path"].startswith(landing.rstrip("/") + "/") else None
        return any(fnmatch.fnmatchcase(text, path_glob) for text in (row["path"], local_path(row["path"]) or "", relative or ""))
    return True


def retry_quarantined(
    home: Home, *, reason: str | None = None, path_glob: str | None = None, dry_run: bool = False
) -> list[dict[str, Any]]:
    """Ask for one more try of every currently quarantined file version whose reason contains ``reason`` (or whose
    cause is ``reason``) and whose path (full, local, or below landing) matches ``path_glob``; returns their rows
    (``path``, ``reason``, ``read_from``). ``dry_run``: only say which."""
    files = home.files
    current = current_outcomes(home)
    quarantined = current.filter(pc.equal(current.column("kind"), "quarantine"))
    if quarantined.num_rows == 0:
        return []
    ledger = home.ledger.read(filter=pc.field("file_id").isin(quarantined.column("file_id").combine_chunks())).to_pylist()
    by_id = {row["file_id"]: row for row in ledger}
    landing = home.landing
    chosen = []
    for outcome in quarantined.to_pylist():
        row = by_id.get(outcome["file_id"])
        if row is None:
            continue
        row = {**row, "attempt": outcome["attempt"], "reason": outcome["reason"], "cause": outcome["cause"]}
        if not _matches(row, reason, path_glob, landing):
            continue
        stored = outcome["stored_path"]
        row["read_from"] = stored if stored and stored != row["path"] and _there(files, stored) else None
        chosen.append(row)
    if chosen and not dry_run:
        record_retries(home.ledger, chosen, [row["read_from"] for row in chosen])
    return chosen
