"""Names that stay inside the landing folder and that Spark reads: checked before ``drop`` or ``stage`` writes.

A label is one folder name; a file's path below the landing folder is relative, has no ``..`` and no part that Spark's
file listing skips (names starting with ``.`` or ``_``): a file put there would never be read, or not land at all.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Callable, Iterable


class UnsafeName(ValueError):
    """A label or path that would leave the landing folder or that the stream would never read."""


def is_candidate(name: str, extensions: list[str]) -> bool:
    """Whether the stream would read a file of this name: an image extension, not hidden or temporary."""
    stem, dot, extension = name.rpartition(".")
    accepted = {e.lower().lstrip(".") for e in extensions}
    return bool(dot and stem) and not name.startswith((".", "_", "~")) and extension.lower() in accepted


def hidden_from_spark(name: str) -> bool:
    """Whether Spark's file listing skips this file or folder name (it starts with ``.`` or ``_``)."""
    return name.startswith((".", "_"))


def check_label(label: str | None) -> str | None:
    """``label`` (``--label``, an upload's label; None: no label) if it is one folder name Spark reads; else raise
    :class:`UnsafeName`. Refused: empty or blank-edged names, ``.`` and ``..``, any ``/`` or ``\\`` (no nesting, no
    traversal, no absolute path), a leading ``.``, ``_`` or ``~`` (never read), control characters, over 255 bytes."""
    if label is None:
        return None
    separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if not label.strip():
        raise UnsafeName("--label is empty: give a class name, e.g. --label Banana")
    if any(sep in label for sep in separators) or "\0" in label:
        raise UnsafeName(f"--label {label!r}: a label is one folder name, without '/' or '\\'")
    if label in (".", ".."):
        raise UnsafeName(f"--label {label!r} would leave the landing folder")
    if hidden_from_spark(label) or label.startswith("~"):
        raise UnsafeName(f"--label {label!r}: Spark never reads folders whose name starts with '.', '_' or '~'")
    if label.strip() != label:
        raise UnsafeName(f"--label {label!r}: leading or trailing blanks")
    if any(ord(c) < 32 or ord(c) == 127 for c in label):
        raise UnsafeName(f"--label {label!r}: control characters")
    if len(label.encode("utf-8")) > 255:
        raise UnsafeName(f"--label {label[:20]!r}...: longer than 255 bytes")
    return label


def check_relative(relative: PurePath) -> None:
    """Raise :class:`UnsafeName` unless ``relative`` is a path below the landing folder that Spark reads."""
    if relative.is_absolute() or relative.anchor:
        raise UnsafeName(f"{relative}: an absolute path would leave the landing folder")
    if ".." in relative.parts:
        raise UnsafeName(f"{relative}: '..' would leave the landing folder")
    hidden = [part for part in relative.parts if hidden_from_spark(part)]
    if hidden:
        raise UnsafeName(f"{relative}: Spark never reads names starting with '.' or '_' ({hidden[0]!r})")


def check_sources(sources: Iterable[Path], is_image: Callable[[str], bool]) -> None:
    """Check, before anything is written, the landing path of every image under the folders among ``sources``
    (they land at the same relative path): raise :class:`UnsafeName` for the first one that is not safe."""
    for source in sources:
        if source.is_dir():
            for path in sorted(source.rglob("*")):
                if path.is_file() and is_image(path.name):
                    check_relative(path.relative_to(source))


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is a regular file really inside ``root``: not a symbolic link, and no linked folder on the
    way takes it out of ``root``."""
    try:
        return not path.is_symlink() and path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def stage_refusal(path: Path, inbox: Path) -> str | None:
    """Why ``stage`` must not promote ``path`` (a symbolic link, or a link on the way out of ``inbox``; a name Spark
    never reads below it), or None if it may."""
    if not inside(path, inbox):
        return f"{path}: a symbolic link, or outside the inbox {inbox}"
    try:
        check_relative(path.relative_to(inbox))
    except UnsafeName as exc:
        return str(exc)
    return None


def check_inbox(inbox: Path, landing: Path) -> None:
    """Raise :class:`UnsafeName` if the inbox and the landing folder overlap (the stream would read files still
    being written, or staged files would be staged again)."""
    inbox, landing = inbox.resolve(), landing.resolve()
    if inbox == landing or inbox.is_relative_to(landing) or landing.is_relative_to(inbox):
        raise UnsafeName(f"--inbox {inbox} and the landing folder {landing} overlap: keep the inbox outside it")


def landing_name(filename: str | None, extensions: list[str], extension: str) -> str:
    """The name an uploaded photo gets in the landing folder: the base name of the client's ``filename`` (any folder
    part dropped, both ``/`` and ``\\``), without leading ``.``, ``_`` or ``~``; when that is not a name the stream
    reads (:func:`is_candidate`), ``extension`` (the format the bytes really are) is appended."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if ord(c) >= 32 and ord(c) != 127).strip().lstrip("._~").strip()
    base = base[:200] or "photo"
    return base if is_candidate(base, extensions) else f"{base}.{extension}"
