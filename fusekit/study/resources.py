"""Wall time and peak memory of one piece of work, for the per-stage table of `fusekit report`."""

from __future__ import annotations

import functools
import platform
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CPUINFO = Path("/proc/cpuinfo")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak_rss() -> bool:
    """Linux lets a process reset its RSS high-water mark (VmHWM); elsewhere the peak is the process's."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _status_mb(field: str) -> float | None:
    if _STATUS.is_file():
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return None


def _peak_rss_mb() -> float:
    if (peak := _status_mb("VmHWM")) is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def machine() -> str:
    """What ran a stage: the GPU, or the CPU's model and torch's thread count. Float results differ in their last
    digits between CPU kinds and thread counts (other kernels, other summation orders), so a stage log says which."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{_cpu_model()}, {torch.get_num_threads()} threads"


@functools.cache
def _cpu_model() -> str:
    lines = _CPUINFO.read_text(errors="replace").splitlines() if _CPUINFO.is_file() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return model or platform.processor() or "CPU"


@contextmanager
def measure() -> Iterator[dict]:
    """Fill a dict with `seconds`, `machine`, `peak_rss_mb`, `rss_growth_mb` (peak over the RSS at the start; Linux
    only) and `peak_cuda_mb` on a GPU, when the block ends."""
    usage: dict = {}
    per_stage = _reset_peak_rss()
    start_rss = _status_mb("VmRSS")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    yield usage
    usage["seconds"] = round(time.perf_counter() - start, 2)
    usage["machine"] = machine()
    usage["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    usage["rss_scope"] = "stage" if per_stage else "process"
    if per_stage and start_rss is not None:
        usage["rss_growth_mb"] = round(usage["peak_rss_mb"] - start_rss, 1)
    if torch.cuda.is_available():
        usage["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
