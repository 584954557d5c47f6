"""Names that stay inside the landing folder and that Spark reads: checked before ``drop`` or ``stage`` writes.

A label is one folder name; a file's path below the landing folder is relative, has no ``..`` and no part that Spark's
file listing skips (names starting with ``.`` or ``_``): a file put there would never be read, or not land at all.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any, Callable, Iterable, Mapping

from fruits.errors import Refused


class UnsafeName(Refused):
    """A label or path that would leave the landing folder or that the stream would never read."""


def is_candidate(name: str, extensions: Iterable[str]) -> bool:
    """Whether the stream would read a file of this name: an image extension, not hidden or temporary."""
    stem, dot, extension = name.rpartition(".")
    return bool(dot and stem) and not name.startswith((".", "_", "~")) and extension.lower() in _accepted(tuple(extensions))


@lru_cache(maxsize=32)
def _accepted(extensions: tuple[str, ...]) -> frozenset[str]:
    """The extensions :func:`is_candidate` accepts (made once per setting: a listing asks for each of a million files)."""
    return frozenset(e.lower().lstrip(".") for e in extensions)


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
        raise UnsafeName("the label is empty: give a class name, e.g. Banana")
    if any(sep in label for sep in separators) or "\0" in label:
        raise UnsafeName(f"label {label!r}: a label is one folder name, without '/' or '\\'")
    if label in (".", ".."):
        raise UnsafeName(f"label {label!r} would leave the landing folder")
    if hidden_from_spark(label) or label.startswith("~"):
        raise UnsafeName(f"label {label!r}: Spark never reads folders whose name starts with '.', '_' or '~'")
    if label.strip() != label:
        raise UnsafeName(f"label {label!r}: leading or trailing blanks")
    if any(ord(c) < 32 or ord(c) == 127 for c in label):
        raise UnsafeName(f"label {label!r}: control characters")
    if len(label.encode("utf-8")) > 255:
        raise UnsafeName(f"label {label[:20]!r}...: longer than 255 bytes")
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


# --- Names as bytes -----------------------------------------------------------------------------------------------
# A POSIX file name is any bytes but "/" and NUL, up to NAME_MAX of them: not necessarily UTF-8 (an old Samba share, a
# zip made elsewhere), with newlines, glob characters, or the NFC and NFD spellings of the same word. Python spells
# an undecodable byte as a lone surrogate (os.fsdecode), which no UTF-8 writer (pyarrow, Delta, the JVM) accepts.
# The ledger's ``path`` is therefore always valid UTF-8: the exact name when it is UTF-8, else a readable spelling
# with each undecodable byte as ``\xNN``; ``raw_path`` then holds the exact bytes (and ``file_id`` is made from them).

NAME_MAX = 255  # bytes in one file name (Linux, macOS, S3 key parts have no such limit but local copies do)
# Hard links under which the stream's reader opens files whose name it cannot spell (see :func:`needs_alias`): a
# hidden folder of landing, which discovery never lists, one link per file version, named by its file_id.
ALIAS_FOLDER = ".fruits-alias"


def spelled(path: str) -> tuple[str, bytes | None]:
    """(the ledger's ``path``, ``raw_path``) of a path or URI as Python spells it (``os.fsdecode``: an undecodable
    byte is a lone surrogate): the path itself and None when it is valid UTF-8; else the readable spelling (each
    undecodable byte as ``\\xNN``) and the exact bytes."""
    try:
        path.encode("utf-8")
        return path, None
    except UnicodeEncodeError:
        raw = path.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace"), raw


def readable(text: str | bytes | None) -> str:
    """``text`` on one line, for people (``fruits files``, ``fruits status``, logs): undecodable bytes as ``\\xNN``,
    control and invisible format characters (newline, tab, escape, right-to-left override...) as ``\\n``, ``\\t``,
    ``\\x1b``, ``\\u202e``. Not reversible: the exact bytes are the ledger's ``raw_path``."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    else:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


def exact_bytes(path: str, raw: bytes | None) -> bytes:
    """The exact bytes of a ledger row's path: ``raw_path`` when there is one, else ``path`` in UTF-8."""
    return raw if raw is not None else path.encode("utf-8", "surrogateescape")


def local_bytes(row: Mapping[str, Any]) -> bytes | None:
    """The local file-system path (bytes, as ``open`` takes it) of a ledger row (or an outcome row: ``path``, and
    ``raw_path`` if it has one), or None for a file on a remote store."""
    from fruits.home.uris import local_path

    uri = os.fsdecode(exact_bytes(row["path"], row.get("raw_path")))
    local = local_path(uri)
    return None if local is None else os.fsencode(local)


def needs_alias(row: Mapping[str, Any]) -> bool:
    """Whether the stream's reader (Spark's ``binaryFile``, the JVM) must open this local file through an alias: its
    name is not UTF-8 (Java cannot spell it), holds a control character (a newline, which Hadoop's paths and the logs
    between the JVM and Python do not carry reliably), or a ``:`` or a glob character (Hadoop's globber builds a
    ``Path`` of each part, and ``a:b[1].jpg`` is "a relative path in an absolute URI" to it)."""
    local = local_bytes(row)
    if local is None:
        return False
    return row.get("raw_path") is not None or any(c < 32 or c == 127 or c in _HADOOP_SPECIAL for c in local)


_HADOOP_SPECIAL = frozenset(b":\\*?[]{}")


def alias_path(landing: str, file_id: str) -> str:
    """Where :func:`needs_alias` files are linked for reading: ``<landing>/.fruits-alias/<file_id>`` (as ``landing``
    is spelled). The link's name is not hidden itself: Spark skips explicitly given files named ``.x`` or ``_x``."""
    return f"{landing.rstrip('/')}/{ALIAS_FOLDER}/{file_id}"


def alias_file_id(path: str) -> str | None:
    """The ``file_id`` an alias path (:func:`alias_path`) stands for, or None for any other path."""
    folder, _, name = path.rpartition("/")
    return name if folder.endswith("/" + ALIAS_FOLDER) and name else None


def fit_name(name: str, file_id: str | None = None, limit: int = NAME_MAX) -> str:
    """A valid UTF-8 file name of at most ``limit`` bytes for ``name`` (a landed file's readable name), made unique
    with ``file_id`` when given: ``stem~<12 digits of file_id>.ext``, the stem cut (between characters) to fit. Archive
    and quarantine targets take it: a 255-byte name plus a suffix would not fit, and a readable spelling of a
    non-UTF-8 name is up to four times longer than the name."""
    name = readable(name).replace("/", "\\x2f") if not _valid_name(name) else name
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or len(extension.encode()) > 16:
        stem, dot, extension = name, "", ""
    suffix = (f"~{file_id[:12]}" if file_id else "") + dot + extension
    if file_id is None and len(name.encode()) <= limit:
        return name
    room = limit - len(suffix.encode())
    cut = stem.encode()[:room].decode("utf-8", "ignore")  # never half a character
    return cut + suffix


def temporary_name(name: str) -> str:
    """The hidden name a file is written under beside its final ``name`` (any name up to 255 bytes, not necessarily
    UTF-8): at most 255 bytes itself, and unique to this call. Not merely to the name and the process: the threads
    of one server write uploads of one name (every phone photo may be ``image.jpg``) at the same time."""
    digest = hashlib.sha256(os.fsencode(name) + secrets.token_bytes(16)).hexdigest()
    return fit_name(f".{name}", digest, limit=NAME_MAX - len(".tmp")) + ".tmp"


def fit_relative(relative: str, file_id: str | None = None) -> str:
    """``relative`` (a landed file's path below landing, ``/``-separated, readable) with every part fitted by
    :func:`fit_name`; the file name, last, made unique with ``file_id`` when given."""
    parts = relative.split("/")
    return "/".join([fit_name(p) for p in parts[:-1]] + [fit_name(parts[-1], file_id)])


def _valid_name(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "/" not in name and "\0" not in name
