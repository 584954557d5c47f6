"""``precision = "auto"``: the CPU facts it starts from, the ImageNet head it measures with, and its accuracy gate
(docs/models.md, "Precision `auto`: the accuracy gate")."""

from __future__ import annotations

import numpy as np
import pytest

from fruits.model.cpu import cpu_info

# /proc/cpuinfo texts of CPUs of each kind (flags lines cut to what matters, as real ones list them).
SAPPHIRE_RAPIDS = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    "flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512vl avx_vnni avx512_bf16 avx512_vnni "
    "amx_bf16 avx512_fp16 amx_tile amx_int8\n"
    "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse avx2\n"
)
CASCADE_LAKE = "model name\t: Intel(R) Xeon(R) Gold 6248\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni\n"
ALDER_LAKE = "model name\t: 12th Gen Intel(R) Core(TM) i7-12700\nflags\t\t: fpu sse avx2 avx_vnni\n"
COOPER_LAKE_BF16_ONLY = "model name\t: Some bf16 CPU\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
HASWELL = "model name\t: Intel(R) Xeon(R) CPU E5-2680 v3\nflags\t\t: fpu sse sse2 avx avx2 fma\n"


@pytest.mark.fast
def test_int8_and_bf16_candidates_come_from_the_instruction_sets():
    cases = {
        SAPPHIRE_RAPIDS: (True, True), CASCADE_LAKE: (True, False), ALDER_LAKE: (True, False),
        COOPER_LAKE_BF16_ONLY: (False, True), HASWELL: (False, False), "": (False, False),
    }
    for text, expected in cases.items():
        cpu = cpu_info(text, cores=4)
        assert (cpu.int8_candidate, cpu.bf16_candidate) == expected, text
    assert cpu_info(HASWELL).cpu_class == "AVX2 only" and cpu_info(CASCADE_LAKE).cpu_class == "AVX-512/AMX"


@pytest.mark.fast
def test_the_one_line_summary_names_model_cores_and_the_deciding_instructions():
    # Only the first processor's lines count (every core of one machine has the same).
    assert cpu_info(SAPPHIRE_RAPIDS, cores=2).summary() == (
        "Intel(R) Xeon(R) Platinum 8480+, 2 cores, AVX2 AVX512_VNNI AVX_VNNI AVX512_BF16 AMX_INT8 AMX_BF16")
    assert cpu_info(HASWELL, cores=8).summary() == "Intel(R) Xeon(R) CPU E5-2680 v3, 8 cores, AVX2"
    assert cpu_info("model name\t: Tiny\nflags\t\t: fpu sse\n", cores=1).summary() == (
        "Tiny, 1 cores, no AVX2, VNNI, BF16 or AMX")


@pytest.mark.fast
def test_this_machine_is_read_from_proc_cpuinfo():
    import os
    import subprocess

    here = cpu_info()
    lscpu = dict(line.split(":", 1) for line in subprocess.run(["lscpu"], capture_output=True, text=True,
                                                               check=True).stdout.splitlines() if ":" in line)
    machine = set(lscpu["Flags"].split())
    assert here.cores == os.cpu_count() and here.model == lscpu["Model name"].strip()
    assert here.int8_candidate == bool({"avx512_vnni", "avx_vnni", "amx_int8"} & machine)
    assert here.bf16_candidate == bool({"avx512_bf16", "amx_bf16"} & machine)


def test_the_bf16_candidate_agrees_with_openvino_on_this_machine():
    """The flags' answer and OpenVINO's CPU plugin's (what ``--precision bf16`` is refused by) must agree, or
    ``auto`` would offer a precision the runtime refuses."""
    from fruits.model.runtimes import cpu_supports_bf16

    assert cpu_info().bf16_candidate == cpu_supports_bf16()


def _weights_never_read():
    """A weights reference for a choice that measures nothing (fp32 the only candidate): its file is never opened."""
    from fruits.model.weights import WeightsRef

    return WeightsRef(path="/nonexistent/weights.h5", sha256="0" * 64, has_top=False, source="file")


@pytest.mark.fast
def test_auto_is_a_setting_and_a_flag_but_never_a_featurizer(tmp_path):
    from conftest import make_config
    from fruits.cli import build_parser, config_from_args
    from fruits.config import ConfigError, allowed_values
    from fruits.model.runtimes import PrecisionUnresolved, make_featurizer

    assert allowed_values("model", "precision") == ("auto", "fp32", "bf16", "int8")
    assert config_from_args(build_parser().parse_args(["stream", "--precision", "auto"])).model.precision == "auto"
    config = make_config(tmp_path, model={"precision": "auto"})
    with pytest.raises(PrecisionUnresolved) as refused:
        make_featurizer(config, _weights_never_read())
    assert isinstance(refused.value, ConfigError) and "choose_precision" in refused.value.reason


@pytest.mark.fast
def test_candidates_follow_the_cpu_given_fastest_first(tmp_path):
    from conftest import make_config
    from fruits.model.accuracy import candidates, choose_precision

    config = make_config(tmp_path)
    tried, skipped = candidates(config, cpu_info(HASWELL))
    assert tried == ["fp32"] and set(skipped) == {"int8", "bf16"} and "VNNI" in skipped["int8"]
    assert candidates(config, cpu_info(CASCADE_LAKE))[0] == ["int8", "fp32"]
    assert candidates(config, cpu_info(COOPER_LAKE_BF16_ONLY))[0] == ["bf16", "fp32"]
    assert candidates(config, cpu_info(SAPPHIRE_RAPIDS))[0] == ["int8", "bf16", "fp32"]
    tensorflow = make_config(tmp_path, model={"runtime": "tensorflow"})
    assert candidates(tensorflow, cpu_info(SAPPHIRE_RAPIDS))[0] == ["fp32"]

    # Only AVX2: fp32 without measuring anything (the weights are never opened), and the CPU it was chosen on.
    choice = choose_precision(config, _weights_never_read(), cpu=cpu_info(HASWELL, cores=8))
    assert (choice.precision, choice.candidates) == ("fp32", ())
    assert choice.cpu == "Intel(R) Xeon(R) CPU E5-2680 v3, 8 cores, AVX2"
    assert (choice.gate_photos, choice.calibration_photos) == (13, 131)  # the shipped photos of fruits ImageNet knows
    assert "int8 not a candidate" in choice.describe()


@pytest.mark.fast
def test_the_gate_refuses_a_lost_hit_or_a_lost_top1_and_judges_only_with_enough_photos():
    """The gate's rule, on a head and features made here (the real ones are measured by the slow test below)."""
    from fruits.config import ConfigError
    from fruits.model.accuracy import IMAGENET_CLASSES, ImageNetHead, judge

    rng = np.random.default_rng(7)
    head = ImageNetHead(np.eye(1280, 1000, dtype=np.float32), np.zeros(1000, dtype=np.float32), "made here")
    labels = [*IMAGENET_CLASSES] + [None] * 87  # 13 gate photos among 100 calibration photos
    fp32 = rng.random((100, 1280), dtype=np.float32)
    for row, label in enumerate(labels[:13]):
        fp32[row, IMAGENET_CLASSES[label]] = 5.0  # fp32 puts every gate photo's class first
    assert judge("fp32", fp32, fp32, head, labels).passed

    noisy = fp32 + rng.normal(0, 1e-4, fp32.shape).astype(np.float32)  # tiny changes: same top classes
    assert judge("int8", noisy, fp32, head, labels).passed
    lost_hit = fp32.copy()
    lost_hit[0, IMAGENET_CLASSES[labels[0]]] = -5.0  # one gate photo of 13: -7.7 points
    result = judge("int8", lost_hit, fp32, head, labels)
    assert not result.passed and result.imagenet_top5 == pytest.approx(12 / 13) and "-7.7 points" in result.reason
    lost_top1 = fp32.copy()
    for row in range(13, 16):  # fp32's best guess out of the top 5 on 3 of the other photos: 97 % kept
        lost_top1[row, head.top(fp32[row : row + 1], 1)[0, 0]] = -5.0
    result = judge("bf16", lost_top1, fp32, head, labels)
    assert not result.passed and result.imagenet_top5 == 1.0 and result.top1_kept == pytest.approx(0.97)
    with pytest.raises(ConfigError, match="fewer than 10"):
        judge("int8", fp32[4:], fp32[4:], head, labels[4:])


@pytest.mark.fast
def test_a_missing_head_file_is_one_clear_error_naming_the_setting(tmp_path):
    from conftest import make_config
    from fruits.errors import Unavailable
    from fruits.model.accuracy import imagenet_head

    with pytest.raises(Unavailable, match=r"no such file\. Set \[model\] head_weights"):
        imagenet_head(make_config(tmp_path, model={"head_weights": str(tmp_path / "nope.h5")}))


def test_the_head_is_keras_own_classifier_in_either_file_format(tmp_path):
    """The head read from the with-top file (Keras 3 format) and from the legacy .h5 format of Keras' own download
    (written here by Keras' legacy writer) is the Dense layer Keras itself loads; a file without it is refused."""
    import h5py
    import keras
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    from conftest import NOTOP_WEIGHTS, TOP_WEIGHTS, make_config
    from fruits.errors import Unavailable
    from fruits.model.accuracy import imagenet_head, read_head

    full = keras.applications.MobileNetV2(weights=None, include_top=True, input_shape=(224, 224, 3))
    full.load_weights(str(TOP_WEIGHTS))
    kernel, bias = full.layers[-1].get_weights()
    legacy = tmp_path / "legacy.h5"
    with h5py.File(legacy, "w") as handle:
        save_weights_to_hdf5_group(handle, full)
    for head in (imagenet_head(make_config(tmp_path)), read_head(legacy)):
        assert head.kernel.shape == (1280, 1000) and np.array_equal(head.kernel, kernel) and np.array_equal(head.bias, bias)
    with pytest.raises(Unavailable, match="no 1000-class ImageNet head"):
        read_head(NOTOP_WEIGHTS)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(Unavailable, match="not a Keras HDF5"):
        read_head(tmp_path / "junk.h5")


def test_offline_imagenet_head_is_one_clear_error_naming_the_setting(tmp_path, monkeypatch):
    """"imagenet" with an empty Keras cache and no network: Keras' download fails, and the message says what to set."""
    from conftest import make_config
    from fruits.model.accuracy import imagenet_head
    from fruits.model.weights import WeightsUnavailable

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(WeightsUnavailable) as unavailable:
        imagenet_head(make_config(tmp_path, model={"head_weights": "imagenet"}))
    assert "with its classifier head" in str(unavailable.value) and "[model] head_weights" in str(unavailable.value)


def test_offline_imagenet_asked_of_a_home_on_a_local_file_names_the_homes_model(tmp_path, monkeypatch):
    """`--weights imagenet` offline, on a home whose model runs a local file: the download's message, and which model
    the home runs, so the user knows to leave the flag out (the trial's `fruits identify --weights imagenet`)."""
    from conftest import make_config
    from fruits.home.home import Home
    from fruits.home.models import ModelRecord, Registry
    from fruits.model.active import model_to_run
    from fruits.model.weights import WeightsUnavailable

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    home = Home.from_config(make_config(tmp_path))
    local = str(tmp_path / "notop.weights.h5")
    home.models.save(Registry((ModelRecord(
        number=1, model_id="mobilenet_v2/local-abc/openvino-fp32", weights=local, weights_id="local-abc",
        runtime="openvino", precision="fp32", views="single", table=home.config.features_table, state="active",
        since="2026-12-07T00:00:00+00:00"),)))
    with pytest.raises(WeightsUnavailable) as unavailable:
        model_to_run(home, asked={"weights": "imagenet"})
    message = str(unavailable.value)
    assert "Could not download Keras' ImageNet weights" in message
    assert f"active model is mobilenet_v2/local-abc/openvino-fp32 (model 1, weights {local!r})" in message
    assert "leave out --weights and FRUITS_WEIGHTS" in message


@pytest.mark.slow
def test_auto_on_this_cpu_chooses_the_fastest_precision_that_passes_the_gate(tmp_path, weights):
    """Real model, real calibration photos: on this machine (VNNI or AMX) int8 if it passes the gate, with the
    rates it measured; the int8 IR is quantized once per user (cached), as --precision int8 does."""
    from conftest import make_config
    from fruits.model.accuracy import FASTEST_FIRST, choose_precision

    here = cpu_info()
    if not here.int8_candidate:
        pytest.skip("this CPU has no VNNI or AMX int8: int8 is no candidate here")
    choice = choose_precision(make_config(tmp_path), weights)
    print(choice.describe())
    assert choice.cpu == here.summary() and (choice.gate_photos, choice.calibration_photos) == (13, 131)
    first = choice.candidates[0]
    assert first.precision == "int8" and 0.5 <= first.imagenet_top5 <= 1 and 0 < first.top1_kept <= 1
    assert first.passed == (choice.precision == "int8")  # the fastest that passes, else the next one measured
    assert [c.precision for c in choice.candidates] == [p for p in FASTEST_FIRST if p in [c.precision for c in choice.candidates]]
    assert choice.candidates[-1].passed and choice.candidates[-1].precision == choice.precision
    assert all(not c.passed for c in choice.candidates[:-1])
