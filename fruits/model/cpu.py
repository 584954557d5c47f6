"""The CPU the model runs on, from ``/proc/cpuinfo``: its model name, core count and the instruction sets that decide
which precisions are worth running (``precision = "auto"``, :mod:`fruits.model.accuracy`) and which figures of
docs/performance.md apply to it (bench/honest.py prints :meth:`Cpu.describe` first in every bench).

- int8 is a candidate where the CPU has int8 dot-product instructions: AVX512_VNNI, AVX_VNNI or AMX int8. Without
  them OpenVINO runs a quantized model through slower emulation, and it is no faster than fp32.
- bf16 is a candidate where it has bf16 instructions: AVX512_BF16 or AMX bf16, the same test as OpenVINO's CPU
  plugin (:func:`fruits.model.runtimes.cpu_supports_bf16` asks OpenVINO; a test checks that both agree here).

Reading a text rather than the machine lets a test, or the lead's record of the CPU a home's model was chosen on,
describe another CPU. Imports nothing heavy.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

# The /proc/cpuinfo flags that matter to the figures: AVX2 (every fp32 figure), AVX512_VNNI / AMX (int8, bf16).
FLAGS = {"avx2": ("avx2",), "avx512_vnni": ("avx512_vnni",), "amx": ("amx_tile", "amx_int8", "amx_bf16")}
# Instructions that make int8 inference fast (dot products of int8 vectors), and bf16 inference possible and fast.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Cpu:
    model: str
    cores: int
    flags: dict[str, bool] = field(default_factory=dict)  # FLAGS' names: the figures' classes (bench/honest.py)
    # Every flag of /proc/cpuinfo's "flags" line (of its first processor).
    instructions: frozenset[str] = field(default_factory=frozenset)

    @property
    def cpu_class(self) -> str:
        """docs/performance.md's table for this CPU: "AVX-512/AMX" or "AVX2 only" (or "no AVX2")."""
        if self.flags.get("amx") or self.flags.get("avx512_vnni"):
            return "AVX-512/AMX"
        return "AVX2 only" if self.flags.get("avx2") else "no AVX2"

    @property
    def int8_candidate(self) -> bool:
        """Whether int8 can be faster than fp32 here: AVX512_VNNI, AVX_VNNI or AMX int8."""
        return any(flag in self.instructions for flag in INT8_FLAGS)

    @property
    def bf16_candidate(self) -> bool:
        """Whether OpenVINO runs bf16 here: AVX512_BF16 or AMX bf16."""
        return any(flag in self.instructions for flag in BF16_FLAGS)

    def describe(self) -> str:
        """The benches' first line: model, cores, the figures' flags and class."""
        marks = ", ".join(f"{name.upper()} {'yes' if present else 'no'}" for name, present in self.flags.items())
        return f"cpu: {self.model}; {self.cores} cores; {marks}; class {self.cpu_class}"

    def summary(self) -> str:
        """One line for a home's record of the CPU its model was chosen on: the model name, the cores and the
        instruction sets that decide the precisions, e.g. ``Intel(R) Xeon(R) Processor, 2 cores, AVX2 AVX512_VNNI
        AVX_VNNI AVX512_BF16 AMX_INT8 AMX_BF16``."""
        present = [flag.upper() for flag in ("avx2", *INT8_FLAGS[:2], BF16_FLAGS[0], "amx_int8", "amx_bf16")
                   if flag in self.instructions]
        return f"{self.model}, {self.cores} cores, {' '.join(present) or 'no AVX2, VNNI, BF16 or AMX'}"


def cpu_info(cpuinfo: str | None = None, cores: int | None = None) -> Cpu:
    """The CPU's model and flags from ``/proc/cpuinfo`` (or the text given; ``cores``: this machine's by default)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            cpuinfo = ""
    model, flags = None, set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return Cpu(
        model or platform.processor() or "unknown",
        cores or os.cpu_count() or 1,
        {name: any(f in flags for f in names) for name, names in FLAGS.items()},
        frozenset(flags),
    )
