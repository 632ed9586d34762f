"""What a timing depends on: the machine, its threads and the library versions, recorded with every timed output."""

from __future__ import annotations

import os
import platform

import torch


def machine_info(device: torch.device | None = None) -> dict:
    """What a timing depends on: CPU model (with its family and model numbers, which tell apart processors a
    virtual machine names alike, e.g. "AMD EPYC") and count, threads, library versions, GPU name."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    info = {"cpu_model": fields.get("model name", platform.processor() or ""), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}
    if "cpu family" in fields:
        info["cpu_family_model"] = f"{fields['cpu family']}/{fields.get('model', '?')}"
        info["avx512"] = "avx512f" in fields.get("flags", "").split()
    if device is not None:
        info["device"] = str(device)
        if device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
    return info
