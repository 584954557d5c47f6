"""Which landed file names the stream reads: the glob is checked with Hadoop's own GlobFilter, on the JVM."""

from __future__ import annotations

import pytest

from streaming.ingest import image_glob

READ = ["a.jpg", "b.JPG", "c.Jpeg", "d.jpeg", "e.png", "f.PNG", "with space.jpg", "50% off.jpg", "ünï.jpg"]
NOT_READ = [".hidden.jpg", "_private.jpg", "~lock.jpg", "x.jpg.part", "x.tmp", "x.crdownload", "x.gif", "x.jpg~", "jpg"]


@pytest.mark.slow
def test_glob_accepts_images_in_any_case_and_refuses_hidden_and_temporary_names(spark):
    jvm = spark.sparkContext._jvm
    glob = jvm.org.apache.hadoop.fs.GlobFilter(image_glob(["jpg", "jpeg", "png"]))
    accepted = {name for name in READ + NOT_READ if glob.accept(jvm.org.apache.hadoop.fs.Path("/landing/" + name))}
    assert accepted == set(READ)


def test_glob_shape():
    assert image_glob(["jpg", ".png"]) == "[!._~]*.{[jJ][pP][gG],[pP][nN][gG]}"
