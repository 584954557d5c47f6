"""`fruits identify`: ingest 80 % of each class of the real sample, identify the other 20 % by PCA neighbours."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NOTOP_WEIGHTS, SAMPLE, make_config, place
from fruits.home.home import Home

pytestmark = pytest.mark.slow

FRUITS = str(Path(sys.executable).with_name("fruits"))


@pytest.fixture(scope="module")
def split() -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """``(landed, held_out)``: a random 80/20 split per class of the real sample, as ``(photo, label)`` pairs (a
    name-sorted split holds out mostly rotated views)."""
    landed, held_out = [], []
    rng = random.Random(2026)
    for folder in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        rng.shuffle(photos)
        cut = round(len(photos) * 0.8)
        landed += [(photo, folder.name) for photo in photos[:cut]]
        held_out += [(photo, folder.name) for photo in photos[cut:]]
    return landed, held_out


def stream_and_refit(spark, weights, home: Path, landed: list[tuple[Path, str]], **model):
    """Land ``landed`` in ``home``, stream it once (available-now) with ``[model]`` settings ``model``, fit PCA k=20."""
    from fruits.batch.refit_pca import refit_pca
    from fruits.streaming.ingest import run_stream

    for label in dict.fromkeys(label for _, label in landed):
        place([photo for photo, of in landed if of == label], home / "landing" / label)
    config = make_config(home, model=model)
    run_stream(spark, config, weights, available_now=True)
    assert refit_pca(spark, config).refitted.k == 20
    return config


@pytest.fixture(scope="module")
def identified_home(spark, weights, split, tmp_path_factory):
    landed, held_out = split
    return stream_and_refit(spark, weights, tmp_path_factory.mktemp("identify-home"), landed), held_out


def top1(results: list[dict], held_out: list[tuple[Path, str]]) -> float:
    """Share of ``held_out`` photos whose predicted label is their class."""
    return sum(result.get("predicted") == label for result, (_, label) in zip(results, held_out)) / len(held_out)


def test_held_out_photos_are_identified_with_top1_accuracy_of_at_least_0_9(identified_home, weights):
    from fruits.model.identify import identify

    config, held_out = identified_home
    results = identify([photo for photo, _ in held_out], config, weights)
    accuracy = top1(results, held_out)
    print(f"identify: {accuracy:.3f} of {len(held_out)}")
    assert len(held_out) == 655 and accuracy >= 0.9
    first = results[0]
    assert len(first["neighbors"]) == 5 and 0 < first["confidence"] <= 1
    distances = [n["distance"] for n in first["neighbors"]]
    assert distances == sorted(distances)


def test_identify_command_prints_one_json_object_per_photo_and_exits_1_if_one_is_unreadable(identified_home, tmp_path):
    config, held_out = identified_home
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    photos = [str(held_out[0][0]), str(held_out[-1][0]), str(broken)]
    result = subprocess.run(
        [FRUITS, "identify", "--home", config.home, "--weights", str(NOTOP_WEIGHTS), "--json", *photos],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stderr[-2000:]  # the others are answered all the same
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["photo"] for line in lines] == photos
    assert lines[0]["predicted"] == held_out[0][1] and {"label", "distance"} == set(lines[0]["neighbors"][0])
    assert lines[2]["error"] == "not a recognised image format"


def test_identify_refuses_other_weights(identified_home):
    from fruits.model.identify import IdentifyError, identify
    from fruits.model.weights import resolve_weights
    from conftest import TOP_WEIGHTS

    config, held_out = identified_home
    with pytest.raises(IdentifyError, match="pass the weights the stream used"):
        identify([held_out[0][0]], config, resolve_weights(str(TOP_WEIGHTS)))


def test_int8_features_identify_within_a_point_of_fp32_and_never_mix_with_them(
    identified_home, split, spark, weights, tmp_path_factory
):
    """The same 80/20 split streamed with --precision int8: every stored row and the PCA say int8, identify's top-1
    on the held-out photos is within 1 point of fp32's, and identify refuses to compare one precision's photo with
    the other's features, both ways."""
    from fruits.model.identify import IdentifyError, identify
    from fruits.reports.status import last_refit

    fp32_config, held_out = identified_home
    int8_home = tmp_path_factory.mktemp("identify-int8-home")
    int8_config = stream_and_refit(spark, weights, int8_home, split[0], precision="int8")
    model_ids = last_refit(Home.from_config(int8_config))["model_ids"]
    assert model_ids == [weights.model_id + "/openvino-int8"], model_ids
    photos = [photo for photo, _ in held_out]
    configs = {"fp32": fp32_config, "int8": int8_config}
    accuracy = {name: top1(identify(photos, config, weights), held_out) for name, config in configs.items()}
    print(f"identify top-1 on {len(photos)} held-out photos: {accuracy}")
    assert accuracy["fp32"] >= 0.9 and accuracy["int8"] >= accuracy["fp32"] - 0.01, accuracy

    fp32_on_int8 = make_config(Path(int8_config.home))  # the default precision, fp32, on the int8 home
    int8_on_fp32 = make_config(Path(fp32_config.home), model={"precision": "int8"})
    for config, asked, stored in ((fp32_on_int8, "fp32", "int8"), (int8_on_fp32, "int8", "fp32")):
        refusal = f"model id \\S+/openvino-{asked}, but PCA v1 was fitted on features of \\S+/openvino-{stored}: pass the precision"
        with pytest.raises(IdentifyError, match=refusal):
            identify(photos[:1], config, weights)
