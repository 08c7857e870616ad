"""What the CPU is, from /proc/cpuinfo: the one reader (simpsonize.cpu) benchmarks and training share."""

from __future__ import annotations

from simpsonize.cpu import cpu_flags, cpu_info, cpu_model_name, cpu_name

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 ht

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: Some Other Name
flags\t\t: fpu
"""


def test_the_first_processor_describes_the_cpu(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert cpu_info(path)["model name"] == "AMD EPYC 9R14 96-Core Processor"
    assert cpu_flags(path) == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16", "ht"}
    assert cpu_model_name(path) == "AMD EPYC 9R14 96-Core Processor"
    assert cpu_name(path) == "AMD EPYC 9R14 96-Core Processor (family 25 model 17; avx2, avx512f, avx512_bf16)"


def test_a_cpu_without_avx2_says_so(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("model name\t: Tiny\ncpu family\t: 6\nmodel\t\t: 1\nflags\t\t: fpu sse2\n")
    assert cpu_name(path) == "Tiny (family 6 model 1; no AVX2)"


def test_no_cpuinfo_gives_empty_answers_not_errors(tmp_path):
    missing = tmp_path / "absent"
    assert cpu_info(missing) == {} and cpu_flags(missing) == set()
    assert cpu_model_name(missing) and cpu_name(missing)  # a name from platform, or "unknown CPU"


def test_this_machines_cpu_is_named():
    name = cpu_name()
    assert "family" in name and "model" in name
