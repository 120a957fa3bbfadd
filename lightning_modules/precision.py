"""`precision: auto`: bf16 autocast where the hardware computes bf16 faster than fp32, fp32 elsewhere.

bf16-mixed keeps fp32 weights, optimizer state and loss, and runs the matmuls (and on a CPU
oneDNN's LSTM) in bfloat16: 8 exponent bits like fp32, 7 mantissa bits. Where the hardware
computes bf16 fast it is the faster choice at the same quality per step (a 2x256 LSTM on an
AMD CPU with AVX512-BF16: 1.46-1.69x the characters/s of fp32, val_loss equal to 1e-4 after
600 steps; on an Intel CPU with AMX: 1.91x). `auto` is a rule of the hardware, not a timing,
so that a run is deterministic on its CPU:
- CUDA: compute capability 8.0 and up (`torch.cuda.is_bf16_supported(including_emulation=False)`);
- CPU: oneDNN's AMX kernels (x86 AMX tiles, not capped off by ONEDNN_MAX_CPU_ISA), or its
  AVX512-BF16 kernels on an AMD CPU. An Intel CPU with AVX512-BF16 and no AMX gets fp32:
  measured there, bf16 ran 0.665x fp32's characters/s for the 2x256 LSTM, and oneDNN's bf16
  matmul (4096x256 by 256x1024) took 1.55-1.89x the fp32 one (bench/bf16_cpu.py). Any other CPU gets fp32 too, where
  bf16 would only be emulated.
"""
from __future__ import annotations

import torch

AUTO = "auto"
ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}  # Lightning's short names
CPU_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def native_bf16(device: str) -> bool:
    """True when `device` ("cuda" or "cpu") computes bf16 in hardware."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device == "cpu":
        # private probes of torch.cpu (cpuinfo): absent in some builds, then no bf16
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in CPU_BF16_PROBES)
    return False


# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA caps the kernels it may use) that allow AMX tiles, and bf16 at all
ISA_AMX = ("ALL", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512_AMX_2")
ISA_BF16 = ISA_AMX + ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX10_2_512")


def cpu_bf16_kernels(environ=None) -> str:
    """Which bf16 matmul kernels oneDNN uses on this CPU: "amx", "avx512_bf16" or "none".

    CPU bf16 results are deterministic on one kind of kernel but differ between kinds in
    the last digits (AMX rounds its tile products differently), so a run records it.
    `ONEDNN_MAX_CPU_ISA` (e.g. AVX512_CORE_BF16) caps what the hardware offers."""
    import os

    cap = (environ if environ is not None else os.environ).get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() and cap in ISA_AMX:
        return "amx"
    if native_bf16("cpu") and cap in ISA_BF16:
        return "avx512_bf16"
    return "none"


def _cpuinfo(key: str) -> str | None:
    """The value of `key` in /proc/cpuinfo (Linux), else None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_vendor() -> str:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD", ...; Linux: /proc/cpuinfo), else ""."""
    return _cpuinfo("vendor_id") or ""


def cpu_auto_bf16(kernels: str, vendor: str) -> bool:
    """Whether `auto` takes bf16 on a CPU whose oneDNN bf16 kernels are `kernels`
    (cpu_bf16_kernels()) from `vendor` (cpu_vendor()): AMX anywhere, AVX512-BF16 on AMD only."""
    return kernels == "amx" or (kernels == "avx512_bf16" and vendor == "AuthenticAMD")


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module says."""
    import platform

    return _cpuinfo("model name") or platform.processor() or platform.machine()


def resolve_precision(precision: str, accelerator: str) -> str:
    """The Lightning precision that will train: `precision` itself, except "auto" ->
    "bf16-mixed" where the accelerator computes bf16 fast (the module's docstring), else "32-true"; short names ("32")
    spelled out as the Trainer does; and "16-mixed" on a CPU -> "bf16-mixed", the swap
    Lightning's Trainer makes there (CPU autocast has no fp16).

    Each process resolves for its own machine: give multi-node runs on mixed hardware an
    explicit precision. On CUDA the probe initialises CUDA in the calling process."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        device = "cuda"
    elif accelerator in ("cpu", "auto"):
        device = "cpu"
    else:  # mps and others: fp32
        device = None
    precision = ALIASES.get(precision, precision)
    if precision == "16-mixed" and device == "cpu":
        return "bf16-mixed"
    if precision != AUTO:
        return precision
    if device == "cpu":
        return "bf16-mixed" if cpu_auto_bf16(cpu_bf16_kernels(), cpu_vendor()) else "32-true"
    return "bf16-mixed" if device == "cuda" and native_bf16(device) else "32-true"
