"""The name of the device a run or benchmark ran on, recorded beside its figures: timings differ by machine
(the same 2-core job ran 2.5x slower on one CPU model than on another), so a figure without it cannot be
compared."""

import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name as lscpu gives it (Linux: /proc/cpuinfo), else what the platform says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
