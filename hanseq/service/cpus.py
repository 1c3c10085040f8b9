"""How many CPUs this process may use: the affinity mask, capped by the cgroup's CPU quota.

``os.cpu_count()`` counts every core of the node: in a container limited to 4 CPUs on a
32-core node, 32 torch threads would share 4 CPUs' worth of time and be throttled. The quota
is cgroup v2's ``cpu.max`` ("<quota> <period>", or "max"), else v1's ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us`` (-1: none); a fractional quota rounds down (at least 1).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def usable_cpus(cgroup: Path = CGROUP) -> tuple[int, str]:
    """(CPUs, how that was decided) for this process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    quota = cpu_quota(cgroup)
    if quota is not None and quota < cores:
        return max(1, math.floor(quota)), f"cgroup CPU quota {quota:g} of {cores} cores"
    return cores, f"{cores} cores" + (f" (cgroup quota {quota:g})" if quota else "")


def cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """The CPU quota in CPUs, or None when there is none (or no cgroup to read)."""
    v2 = _read(cgroup / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        if quota == "max" or not period:
            return None
        return _ratio(quota, period)
    for v1 in (cgroup / "cpu", cgroup / "cpu,cpuacct"):
        quota_us, period_us = _read(v1 / "cpu.cfs_quota_us"), _read(v1 / "cpu.cfs_period_us")
        if quota_us is not None and period_us is not None:
            return None if quota_us.startswith("-") else _ratio(quota_us, period_us)
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        value = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None
