"""`precision: auto` (lightning_modules/precision.py): bf16-mixed exactly where the hardware computes bf16 fast."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_modules.precision import cpu_auto_bf16, cpu_bf16_kernels, cpu_model, cpu_vendor, native_bf16, resolve_precision
from tests.conftest import one_line_error, run_module


def _cpuinfo(key: str) -> str:
    info = Path("/proc/cpuinfo")
    if not info.exists():
        pytest.skip("no /proc/cpuinfo to compare with")
    for line in info.read_text().splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    pytest.skip(f"/proc/cpuinfo lists no {key}")


def _cpu_flags() -> set[str]:
    return set(_cpuinfo("flags").split())


def test_cpu_bf16_follows_the_cpus_own_flags():
    flags = _cpu_flags()
    if "avx512_bf16" in flags:
        assert native_bf16("cpu")
    if not flags & {"avx512_bf16", "amx_bf16", "amx_tile"}:
        assert not native_bf16("cpu")


def test_the_bf16_kernel_kind_follows_the_flags_and_onednns_cap():
    flags = _cpu_flags()
    kind = "amx" if "amx_tile" in flags else "avx512_bf16" if flags & {"avx512_bf16", "amx_bf16"} else "none"
    assert cpu_bf16_kernels({}) == kind
    assert cpu_bf16_kernels({"ONEDNN_MAX_CPU_ISA": "avx512_core_bf16"}) == ("none" if kind == "none" else "avx512_bf16")
    assert cpu_bf16_kernels({"ONEDNN_MAX_CPU_ISA": "AVX2"}) == "none"
    model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    assert cpu_model() == model


BF16_RUN = """
import hashlib, torch
from lightning_modules.precision import cpu_bf16_kernels
torch.manual_seed(0)
lstm, x = torch.nn.LSTM(64, 128, batch_first=True), torch.randn(8, 32, 64)
with torch.autocast("cpu", dtype=torch.bfloat16):
    y, _ = lstm(x)
print(cpu_bf16_kernels(), hashlib.sha256(y.float().detach().numpy().tobytes()).hexdigest())
"""


def test_cpu_bf16_is_deterministic_on_one_kernel_kind_and_amx_rounds_differently():
    """Why run.json and MLflow record the kernel kind: the same seed gives other bf16 losses without AMX."""
    if "amx_tile" not in _cpu_flags():
        pytest.skip("this CPU has no AMX: one bf16 kernel kind only")

    def run(isa):
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa}
        return subprocess.run([sys.executable, "-c", BF16_RUN], env=env, capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[1]).stdout.split()

    first, again, capped = run("ALL"), run("ALL"), run("AVX512_CORE_BF16")
    assert first == again and first[0] == "amx" and capped[0] == "avx512_bf16"
    assert capped[1] != first[1]


def test_auto_takes_bf16_on_amx_and_on_amd_avx512_bf16_only():
    """The measured cases: AMX 1.91x fp32, AMD with AVX512-BF16 1.46-1.69x, Intel with AVX512-BF16 and no AMX 0.665x."""
    assert cpu_auto_bf16("amx", "GenuineIntel") and cpu_auto_bf16("amx", "AuthenticAMD")
    assert cpu_auto_bf16("avx512_bf16", "AuthenticAMD")
    assert not cpu_auto_bf16("avx512_bf16", "GenuineIntel")
    assert not cpu_auto_bf16("avx512_bf16", "")  # vendor unknown: the safe fp32
    for vendor in ("GenuineIntel", "AuthenticAMD", "", "ARM"):
        assert not cpu_auto_bf16("none", vendor)


def test_auto_follows_this_cpus_vendor_and_flags(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # a cap would change the kernels auto sees
    vendor, flags = _cpuinfo("vendor_id"), _cpu_flags()
    assert cpu_vendor() == vendor
    fast = "amx_tile" in flags or ("avx512_bf16" in flags and vendor == "AuthenticAMD")
    assert resolve_precision("auto", "cpu") == ("bf16-mixed" if fast else "32-true")


def test_auto_resolves_by_device_and_explicit_values_pass_through():
    want = "bf16-mixed" if cpu_auto_bf16(cpu_bf16_kernels(), cpu_vendor()) else "32-true"
    assert resolve_precision("auto", "cpu") == want
    assert resolve_precision("auto", "mps") == "32-true"
    if not torch.cuda.is_available():
        assert resolve_precision("auto", "auto") == want  # auto accelerator: the CPU here
        assert not native_bf16("cuda")
    for p in ("32-true", "bf16-mixed", "bf16-true"):
        assert resolve_precision(p, "cpu") == p
    assert resolve_precision("16-mixed", "cpu") == "bf16-mixed"  # Lightning's own swap on a CPU
    assert resolve_precision("16-mixed", "mps") == "16-mixed"
    assert resolve_precision("32", "cpu") == "32-true"  # the Trainer's own spelling


def test_fit_trains_and_reports_the_resolved_precision(corpus):
    from lightning_modules.train import fit
    from tests.test_step_ops import CFG

    for asked in ("auto", "16-mixed", "32"):  # 16-mixed: the Trainer swaps in bf16 on a CPU, and says so
        r = fit(dict(CFG, precision=asked, max_steps=3), corpus, None)
        want = resolve_precision(asked, "cpu")
        assert r["precision"] == want == r["trainer"].precision and r["steps"] == 3


def test_a_bad_precision_is_one_line_naming_the_choices(tmp_path):
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    r = run_module("pipeline.train", "tinyshakespeare", "--params", params, "--set", "train.precision=bf17", cwd=tmp_path)
    err = one_line_error(r)
    assert "train.precision" in err and "auto" in err
