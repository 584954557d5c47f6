"""`fruits identify`: ingest 80 % of each class of the real sample, identify the other 20 % by PCA neighbours."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NOTOP_WEIGHTS, SAMPLE, make_config, place

pytestmark = pytest.mark.slow

FRUITS = str(Path(sys.executable).with_name("fruits"))


@pytest.fixture(scope="module")
def identified_home(spark, weights, tmp_path_factory):
    from fruits.batch.refit_pca import refit_pca
    from fruits.streaming.ingest import run_stream

    home = tmp_path_factory.mktemp("identify-home")
    held_out = []
    rng = random.Random(2026)
    for folder in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        rng.shuffle(photos)  # a random 80/20 split per class (a name-sorted split holds out mostly rotated views)
        cut = round(len(photos) * 0.8)
        place(photos[:cut], home / "landing" / folder.name)
        held_out += [(photo, folder.name) for photo in photos[cut:]]
    config = make_config(home)
    run_stream(spark, config, weights, available_now=True)
    assert refit_pca(spark, config).refitted.k == 20
    return config, held_out


def test_held_out_photos_are_identified_with_top1_accuracy_of_at_least_0_9(identified_home, weights):
    from fruits.identify import identify

    config, held_out = identified_home
    results = identify([photo for photo, _ in held_out], config, weights)
    correct = sum(result["predicted"] == label for result, (_, label) in zip(results, held_out))
    accuracy = correct / len(held_out)
    print(f"identify: {correct}/{len(held_out)} = {accuracy:.3f}")
    assert len(held_out) == 655 and accuracy >= 0.9
    first = results[0]
    assert len(first["neighbors"]) == 5 and 0 < first["confidence"] <= 1
    distances = [n["distance"] for n in first["neighbors"]]
    assert distances == sorted(distances)


def test_identify_command_prints_one_json_object_per_photo(identified_home, tmp_path):
    config, held_out = identified_home
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    photos = [str(held_out[0][0]), str(held_out[-1][0]), str(broken)]
    result = subprocess.run(
        [FRUITS, "identify", "--home", config.home, "--weights", str(NOTOP_WEIGHTS), "--json", *photos],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["photo"] for line in lines] == photos
    assert lines[0]["predicted"] == held_out[0][1] and {"label", "distance"} == set(lines[0]["neighbors"][0])
    assert lines[2]["error"] == "not a recognised image format"


def test_identify_refuses_other_weights(identified_home):
    from fruits.identify import IdentifyError, identify
    from fruits.model import resolve_weights
    from conftest import TOP_WEIGHTS

    config, held_out = identified_home
    with pytest.raises(IdentifyError, match="pass the weights the stream used"):
        identify([held_out[0][0]], config, resolve_weights(str(TOP_WEIGHTS)))
