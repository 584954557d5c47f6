"""``precision = "auto"``: the CPU facts it starts from, the ImageNet head it measures with, and its accuracy gate
(docs/models.md, "Precision `auto`: the accuracy gate")."""

from __future__ import annotations

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
