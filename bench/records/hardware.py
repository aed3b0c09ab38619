"""What the machine computes fast, and the precision a run trains in.

The CPU's model name and the ISA flags that decide speed here (from /proc/cpuinfo), the GPU's name, memory,
compute capability, driver and CUDA versions; ``train.precision=auto`` resolved from them (bf16 where the device
has bf16 units, else fp32; fp16 is never chosen), and the one-line warning for bf16 on a CPU without such units.
docs/protocol.md says why a study declares its precision explicitly instead of ``auto``.
"""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
# the flags recorded: AVX2 / AVX-512 set fp32 speed, AVX512_BF16 and AMX the speed of bf16 matmuls
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # a CPU with either computes bf16 matmuls natively
BF16_MIN_CAPABILITY = 8  # CUDA compute capability from which the GPU has bf16 tensor cores (Ampere)
# measured on an AVX2-only AMD EPYC (2 cores; issue 26): without bf16 units torch emulates bf16 matmuls
BF16_CPU_COST = ("on an AVX2-only AMD EPYC a bf16 matmul 1024x384 @ 384x1536 took 1,497 ms on one thread against "
                 "30 ms in fp32, ~50x")


def parse_cpuinfo(text: str) -> tuple[Optional[str], set[str]]:
    """(model name, flags) of the first processor in a /proc/cpuinfo text (x86 'flags', Arm 'Features')."""
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if model is None and key in ("model name", "cpu model", "hardware"):
            model = value.strip() or None
        elif flags is None and key in ("flags", "features"):
            flags = set(value.split())
        if model is not None and flags is not None:
            break
    return model, flags or set()


@lru_cache(maxsize=1)
def _host_cpuinfo() -> tuple[Optional[str], frozenset[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    model, flags = parse_cpuinfo(text)
    return model or platform.processor() or None, frozenset(flags)


def cpu_info(cpuinfo: Optional[str] = None) -> dict[str, Any]:
    """{"cpu_model", "cpu_flags" (the SPEED_FLAGS present), "cpu_bf16" (bf16 units)}; cpuinfo: a /proc/cpuinfo
    text to read instead of this machine's (tests)."""
    model, flags = parse_cpuinfo(cpuinfo) if cpuinfo is not None else _host_cpuinfo()
    return {"cpu_model": model, "cpu_flags": [f for f in SPEED_FLAGS if f in flags],
            "cpu_bf16": cpu_has_bf16(flags)}


def cpu_has_bf16(flags) -> bool:
    return any(f in flags for f in BF16_CPU_FLAGS)


def cuda_has_bf16(props) -> bool:
    """A CUDA device computes bf16 natively from compute capability 8.0 (torch may emulate it below)."""
    return int(props.major) >= BF16_MIN_CAPABILITY


def driver_version() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.stdout.strip().splitlines()[:1]
    return first[0].strip() if out.returncode == 0 and first else None


def gpu_info(props=None, count: Optional[int] = None) -> dict[str, Any]:
    """The first CUDA device: name, memory, compute capability, bf16 units, driver and CUDA versions ({} without
    CUDA). props / count: torch.cuda device properties to read instead of this machine's (tests)."""
    import torch

    if props is None:
        if not torch.cuda.is_available():
            return {}
        props, count = torch.cuda.get_device_properties(0), torch.cuda.device_count()
    return {
        "gpu": props.name,
        "gpu_count": count,
        "gpu_memory_gb": round(int(props.total_memory) / 2**30, 1),
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_bf16": cuda_has_bf16(props),
        "cuda_version": torch.version.cuda,
        "gpu_driver": driver_version(),
    }


def train_device() -> str:
    """Where a run trains: the Trainer takes the GPU whenever torch sees one (bench.run.training.make_trainer)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(requested: str, device: str, cpu: Optional[dict] = None, gpu: Optional[dict] = None
                      ) -> tuple[str, str]:
    """(precision, why): auto -> bf16 where `device` ('cpu' | 'cuda') has bf16 units, else fp32; an explicit
    value is returned as it is. cpu / gpu: cpu_info() / gpu_info() dicts (this machine's when None)."""
    if requested != "auto":
        return requested, "set explicitly"
    if device == "cuda":
        gpu = gpu_info() if gpu is None else gpu
        if gpu.get("gpu_bf16"):
            return "bf16", f"auto: {gpu.get('gpu')} (compute capability {gpu.get('gpu_capability')}) has bf16 units"
        return "fp32", (f"auto: {gpu.get('gpu')} (compute capability {gpu.get('gpu_capability')}) has no bf16 units "
                        f"(from {BF16_MIN_CAPABILITY}.0)")
    cpu = cpu_info() if cpu is None else cpu
    have = [f for f in BF16_CPU_FLAGS if f in cpu.get("cpu_flags", [])]
    if have:
        return "bf16", f"auto: the CPU has {' and '.join(have)}"
    return "fp32", "auto: the CPU has no avx512_bf16 / amx_bf16 (bf16 would be emulated)"


def bf16_warning(precision: str, device: str, cpu: Optional[dict] = None) -> Optional[str]:
    """The one line for bf16 on a CPU without bf16 units (None otherwise): what it costs, what to type instead."""
    if precision != "bf16" or device != "cpu":
        return None
    cpu = cpu_info() if cpu is None else cpu
    if cpu.get("cpu_bf16"):
        return None
    flags = " ".join(cpu.get("cpu_flags") or []) or "none of " + " ".join(SPEED_FLAGS)
    return (f"[bench] warning: train.precision=bf16 on a CPU without bf16 units ({cpu.get('cpu_model') or 'unknown CPU'}"
            f"; flags: {flags}): bf16 is emulated there, far slower than fp32 ({BF16_CPU_COST}); "
            "the run goes on as asked - type train.precision=fp32 (or train.precision=auto) to train in fp32, "
            "a different config hash")


def apply_precision(cfg, device: Optional[str] = None) -> dict[str, str]:
    """Resolve cfg.train.precision=auto in place for the device the run trains on, before the config is hashed:
    an auto run hashes as its resolved value, so it matches records made with that value given explicitly.
    Returns the record's "precision" block: requested, resolved, why."""
    requested = str(cfg.train.precision)
    resolved, why = resolve_precision(requested, device or train_device()) if requested == "auto" else (
        requested, "set explicitly")
    if resolved != requested:
        cfg.train.precision = resolved
    return {"requested": requested, "resolved": resolved, "why": why}


def capability_line(device: str, cpu: Optional[dict] = None, gpu: Optional[dict] = None) -> str:
    """`bench perf`'s header line: the hardware and whether it computes bf16 natively."""
    if device == "cuda":
        gpu = gpu_info() if gpu is None else gpu
        return (f"{gpu.get('gpu')} ({gpu.get('gpu_memory_gb')} GiB, compute capability {gpu.get('gpu_capability')}, "
                f"driver {gpu.get('gpu_driver')}, CUDA {gpu.get('cuda_version')}): bf16 units "
                f"{'yes' if gpu.get('gpu_bf16') else 'no'}")
    cpu = cpu_info() if cpu is None else cpu
    return (f"{cpu.get('cpu_model') or 'unknown CPU'} (flags: {' '.join(cpu.get('cpu_flags') or []) or 'none'}): "
            f"bf16 units {'yes' if cpu.get('cpu_bf16') else 'no (bf16 is emulated, ~50x slower than fp32)'}")
