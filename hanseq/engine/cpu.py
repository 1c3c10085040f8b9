"""This CPU's model name and flags, from /proc/cpuinfo: what decides the fast paths.

Torch-free, and imported by both engine/precision.py (the number format) and
engine/quantize.py (the int8 engine), so neither imports the other at load time.
"""

from __future__ import annotations


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """(model name, flags) of this CPU, from /proc/cpuinfo (Linux; elsewhere unknown)."""
    model, flags = "unknown CPU", set[str]()
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags
