"""What a measurement ran on, for every benchmark's JSON: the CPU (its model, and the features
that change torch's speed on it), the cores, the GPU where there is one, and the versions.
A figure without its machine cannot be compared: bf16 matmuls are ~60x slower on a CPU that
emulates them than on one with AVX512-BF16 or AMX."""
from __future__ import annotations

import os
import platform
from pathlib import Path

# CPU flags (as /proc/cpuinfo names them) that decide which kernels torch can use
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info(cpuinfo: str | None = None) -> dict[str, str | list[str] | None]:
    """Model name, vendor family/model numbers (a VM may report only "AMD EPYC"; the numbers
    still tell the generation) and the speed-relevant flags, from /proc/cpuinfo on Linux."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.exists() else ""
    first = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if first:
                break  # the first processor describes them all
            continue
        key, _, value = line.partition(":")
        first[key.strip()] = value.strip()
    flags = set(first.get("flags", "").split())
    family = " ".join(f"{k} {first[k]}" for k in ("cpu family", "model") if k in first)
    return {"cpu_model": first.get("model name") or platform.processor() or platform.machine(),
            "cpu_vendor_family_model": f"{first.get('vendor_id', '?')} {family}".strip() if family else None,
            "cpu_speed_flags": [f for f in SPEED_FLAGS if f in flags] if flags else None}


def machine_info() -> dict:
    """The machine a benchmark ran on, for its JSON (torch's view of the GPU, where torch is)."""
    try:
        import torch
    except ModuleNotFoundError:  # a broken environment still gets its machine recorded
        torch = None
    gpu = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None
    return {**cpu_info(), "cpu_cores": os.cpu_count(), "gpu": gpu,
            "gpu_count": torch.cuda.device_count() if gpu else 0,
            "torch": torch.__version__ if torch is not None else None, "python": platform.python_version()}


def describe_machine(info: dict) -> str:
    """One line for a table or a README: "AMD EPYC (AuthenticAMD cpu family 25 model 17), 2 cores"."""
    cpu = info["cpu_model"] + (f" ({info['cpu_vendor_family_model']})" if info.get("cpu_vendor_family_model") else "")
    return f"{cpu}, {info['cpu_cores']} cores" + (f", GPU {info['gpu']}" if info.get("gpu") else "")
