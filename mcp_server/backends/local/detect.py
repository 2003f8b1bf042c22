"""What this machine offers the local backend: its NVIDIA GPUs, which of them this server may use,
and how many CPU cores it has.

Rules: GPUs are found with nvidia-smi (an argument list, no shell), never with torch: the engine
must not need a CUDA torch to count its GPUs, and importing torch costs seconds. Any trouble
running nvidia-smi means "no GPU" (a CPU machine), never an error. Nothing here has state.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess


def detect_gpus(nvidia_smi: str = "nvidia-smi") -> list[tuple[str, float | None]]:
    """(device name, memory MiB) per local NVIDIA GPU, in nvidia-smi order; [] when there is none.

    Uses nvidia-smi (argument list, no shell) rather than torch: the engine must not need a CUDA
    torch to count its GPUs, and importing torch costs seconds.
    """
    exe = shutil.which(nvidia_smi)
    if exe is None:
        return []
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0:
        return []  # e.g. driver not loaded: treat as a CPU machine
    return parse_nvidia_smi(proc.stdout)


def parse_nvidia_smi(text: str) -> list[tuple[str, float | None]]:
    """Parse `name, memory.total` CSV lines such as 'NVIDIA H100 80GB HBM3, 81559 MiB'."""
    found: list[tuple[str, float | None]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, _, mem = line.rpartition(",")
        if not name:  # no comma: the whole line is a name
            name, mem = mem, ""
        m = re.search(r"[\d.]+", mem)
        found.append((name.strip(), float(m.group()) if m else None))
    return found


def visible_indices(count: int) -> list[int]:
    """GPU indices this server may use: all, or those listed in CUDA_VISIBLE_DEVICES.

    Only integer lists are honoured (UUID / MIG forms fall back to all GPUs), and
    CUDA_DEVICE_ORDER=PCI_BUS_ID is set per slot so an index means nvidia-smi's index.
    """
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return list(range(count))
    tokens = [t.strip() for t in raw.split(",") if t.strip()]
    if not tokens:
        return []  # explicitly hidden: run on CPU
    if all(t.isdigit() for t in tokens):
        return [int(t) for t in tokens if int(t) < count]
    return list(range(count))


def cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
