"""`fruits drop` and `fruits stage` refuse labels and paths that would leave the landing folder or that Spark never
reads, before writing anything; `stage` never follows a symbolic link out of its inbox."""

from __future__ import annotations

import os
from pathlib import Path, PurePath

import pytest

from conftest import place, shipped_photos
from fruits.cli import main
from fruits.landing.drop import InboxStager
from fruits.home.names import UnsafeName, check_relative

pytestmark = pytest.mark.fast  # no Spark, no TensorFlow, no ../shared (make test-fast)

EXTENSIONS = ["jpg", "jpeg", "png"]


def tree(root: Path) -> set[str]:
    """Every file and folder under ``root`` (links not followed)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(
    "label,reason",
    [
        ("../../escaped", "one folder name"),
        ("..", "would leave the landing folder"),
        ("/tmp/absolute", "one folder name"),
        ("Banana/ripe", "one folder name"),
        ("back\\slash", "one folder name"),
        (".hidden", "Spark never reads"),
        ("_private", "Spark never reads"),
        ("  ", "empty"),
    ],
)
def test_drop_refuses_a_label_that_leaves_landing_or_is_never_read_and_writes_nothing(tmp_path, capsys, label, reason):
    photo = place(shipped_photos("Banana", 1), tmp_path / "photos")[0]
    home = tmp_path / "a" / "b" / "home"
    before = tree(tmp_path)
    assert main(["drop", "--home", str(home), "--label", label, str(photo)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(("fruits drop: error: label ", "fruits drop: error: the label ")) and reason in err, err
    assert tree(tmp_path) == before, "something was written"


def test_drop_refuses_a_folder_holding_images_under_names_spark_never_reads_and_writes_nothing(tmp_path, capsys):
    source = tmp_path / "photos"
    place(shipped_photos("Banana", 2), source / "Banana")
    place(shipped_photos("Lemon", 1), source / "_drafts" / "Lemon")
    home = tmp_path / "home"
    before = tree(tmp_path)
    assert main(["drop", "--home", str(home), str(source)]) == 2
    err = capsys.readouterr().err
    assert "_drafts/Lemon/" in err and "Spark never reads names starting with '.' or '_'" in err
    assert tree(tmp_path) == before, "the valid images must not land either"
    (source / "_drafts" / "Lemon" / shipped_photos("Lemon", 1)[0].name).unlink()  # without it, the folder drops
    assert main(["drop", "--home", str(home), str(source)]) == 0
    assert sorted(p.name for p in (home / "landing" / "Banana").iterdir()) == [p.name for p in shipped_photos("Banana", 2)]


@pytest.mark.parametrize("relative", ["../x.jpg", "a/../../x.jpg", "/etc/x.jpg", ".cache/x.jpg", "a/_b/x.jpg"])
def test_relative_landing_paths_must_stay_inside_and_be_read(relative):
    with pytest.raises(UnsafeName):
        check_relative(PurePath(relative))
    check_relative(PurePath("orchard/Kiwi/kiwi #1 ü.jpg"))  # nested and odd, but inside and read


def test_stage_does_not_follow_symbolic_links_out_of_the_inbox(tmp_path):
    outside = place(shipped_photos("Pomegranate", 2), tmp_path / "secret")
    inbox, landing = tmp_path / "inbox", tmp_path / "landing"
    real = place(shipped_photos("Banana", 1), inbox / "Banana")[0]
    (inbox / "Fig").mkdir()
    os.symlink(outside[0], inbox / "Fig" / "linked.jpg")  # a link to a file outside
    os.symlink(tmp_path / "secret", inbox / "linked-folder")  # a linked folder leading outside
    place(shipped_photos("Strawberry", 1), inbox / ".partial")  # a folder Spark never reads
    stager = InboxStager(inbox, landing, EXTENSIONS, stable_seconds=0, settle_seconds=0)
    stager.scan()
    stager._track(str(inbox / "Fig" / "linked.jpg"), closed=True)  # as an inotify event would
    stager._track(str(inbox / "linked-folder" / outside[1].name), closed=True)
    assert stager.promote_ready() == 1
    assert tree(landing) == {"Banana", f"Banana/{real.name}"}
    assert all(p.exists() for p in outside) and (inbox / "Fig" / "linked.jpg").is_symlink()


def test_stage_refuses_an_inbox_that_overlaps_the_landing_folder(tmp_path, capsys):
    home = tmp_path / "home"
    for inbox in (home / "landing" / "inbox", home / "landing", home):
        assert main(["stage", "--home", str(home), "--inbox", str(inbox)]) == 2
        assert "overlap" in capsys.readouterr().err
    assert not (home / "landing").exists()


# --- names as bytes ------------------------------------------------------------------------------------------------


def test_a_name_that_is_not_utf8_is_recorded_readably_with_its_exact_bytes_and_its_own_id():
    from fruits.home.ledger import FileVersion, file_id
    from fruits.home.names import exact_bytes, local_bytes, needs_alias, readable, spelled

    raw = FileVersion(os.fsdecode(b"file:/landing/Caf\xe9/caf\xe9.jpg"), 10, 1_700_000_000_000, os.fsdecode(b"Caf\xe9"))
    literal = FileVersion("file:/landing/Caf\\xe9/caf\\xe9.jpg", 10, 1_700_000_000_000, "Caf\\xe9")  # a real name too
    assert raw.path == literal.path == "file:/landing/Caf\\xe9/caf\\xe9.jpg" and raw.label == "Caf\\xe9"
    assert raw.raw == b"file:/landing/Caf\xe9/caf\xe9.jpg" and literal.raw is None
    assert raw.file_id != literal.file_id  # the same spelling, two files: two ids
    assert raw.file_id == file_id(raw.raw, 10, 1_700_000_000_000)
    assert local_bytes({"path": raw.path, "raw_path": raw.raw}) == b"/landing/Caf\xe9/caf\xe9.jpg"
    assert local_bytes({"path": literal.path}) == b"/landing/Caf\\xe9/caf\\xe9.jpg"
    assert exact_bytes(literal.path, None) == literal.path.encode()
    assert spelled("file:/a/b.jpg") == ("file:/a/b.jpg", None)
    assert needs_alias({"path": raw.path, "raw_path": raw.raw})
    assert needs_alias({"path": "file:/l/a\nb.jpg"}) and needs_alias({"path": "file:/l/a:b[1].jpg"})
    assert not needs_alias({"path": "file:/l/caf\u00e9 50%.jpg"}) and not needs_alias({"path": "s3a://b/a:b.jpg"})
    assert readable("file:/l/a\nb\t\x1b[31m\u202e.jpg") == "file:/l/a\\nb\\t\\x1b[31m\\u202e.jpg"
    assert readable(b"caf\xe9") == "caf\\xe9" and readable("e\u0301t\u00e9") == "e\u0301t\u00e9"


def test_archive_names_fit_in_255_bytes_stay_unique_and_cut_no_character():
    from fruits.home.names import alias_file_id, alias_path, fit_name, fit_relative

    longest = "p" * 251 + ".jpg"
    assert fit_name(longest) == longest  # fits as it is
    unique = fit_name(longest, "0123456789abcdef" * 2)
    assert len(unique.encode()) == 255 and unique.endswith("~0123456789ab.jpg")
    assert fit_name(longest, "ffff" * 8) != unique
    accents = fit_name("\u00e9" * 127 + ".jpg", "ab" * 16)  # two bytes a character: cut between characters
    assert len(accents.encode()) <= 255 and accents.encode().decode() == accents
    escaped = fit_name(os.fsdecode(b"\xe9" * 250 + b".jpg"))  # \xe9 spelled in 4 bytes: 1000 bytes to fit
    assert len(escaped.encode()) <= 255 and escaped.startswith("\\xe9") and escaped.endswith(".jpg")
    assert fit_relative("Caf\\xe9/" + longest, "ab" * 16).startswith("Caf\\xe9/")
    assert alias_file_id(alias_path("file:/l/", "ab" * 16)) == "ab" * 16 and alias_file_id("file:/l/x.jpg") is None
