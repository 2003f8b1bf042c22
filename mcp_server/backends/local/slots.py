"""The local backend's slots: one per visible local GPU, else `cpu_slots` CPU slots, or, with
`slot_labels`, simulated GPU slots; each with the environment pinned for the runs on it.

SIMULATION: `slot_labels=["H100", "H100", "H200"]` labels local slots as GPU types so that GPU
tiering, promotion and per-type analysis can be exercised on a CPU-only machine. Such slots are
`simulated=True` and runs get `AUTORESEARCH_GPU_LABEL=<label>` (informational only: the run still
happens on this machine's CPU or GPU i).

Rules: slots are static, built once from the configuration and what detect.py found; a bad
configuration is an InvalidInput that names the valid choices. CPU threads are shared out
evenly among the slots (AUTORESEARCH_THREADS), and CUDA_DEVICE_ORDER=PCI_BUS_ID makes a GPU index
mean nvidia-smi's index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mcp_server.backends.local.detect import cores, visible_indices
from mcp_server.domain import gpus
from mcp_server.domain.errors import InvalidInput
from mcp_server.runtime.runner import ENV_GPU_LABEL, ENV_THREADS

MAX_SLOTS = 256


@dataclass
class Slot:
    name: str
    gpu_type: str
    simulated: bool
    env: dict[str, str] = field(default_factory=dict)   # pinned per slot: CUDA_VISIBLE_DEVICES, threads, label


def build_slots(cpu_slots: int, labels: list[str] | None, gpu_list: list[tuple[str, float | None]]) -> list[Slot]:
    """The slots for `cpu_slots` / `labels` on a machine with the GPUs `gpu_list` (detect_gpus)."""
    indices = visible_indices(len(gpu_list))
    if labels is not None:
        if not isinstance(labels, list) or not labels or len(labels) > MAX_SLOTS:
            raise InvalidInput(f"slot_labels must be a non-empty list of at most {MAX_SLOTS} GPU type names, "
                               f"e.g. ['H100', 'H100', 'H200']; got {labels!r}")
        canon = []
        for label in labels:
            gpu = gpus.find(label) if isinstance(label, str) else None
            if gpu is None:
                raise InvalidInput(f"slot label {label!r} is not a known GPU type; use one of "
                                   f"{', '.join(gpus.known_names())}")
            canon.append(gpu.name)
        if indices and len(canon) > len(indices):
            raise InvalidInput(f"{len(canon)} slot labels but only {len(indices)} local GPUs; give at most "
                               f"{len(indices)} labels (one per GPU) or run without GPUs")
        threads = max(1, cores() // len(canon))
        slots = []
        for i, label in enumerate(canon):
            env = {ENV_THREADS: str(threads), ENV_GPU_LABEL: label}
            if indices:
                env.update(CUDA_VISIBLE_DEVICES=str(indices[i]), CUDA_DEVICE_ORDER="PCI_BUS_ID")
            else:
                env["CUDA_VISIBLE_DEVICES"] = ""
            slots.append(Slot(f"local-sim{i}-{label.lower()}", label, True, env))
        return slots
    if indices:
        threads = max(1, cores() // len(indices))
        return [
            Slot(f"local-gpu{i}", gpus.normalize_device_name(*gpu_list[i]), False,
                 {"CUDA_VISIBLE_DEVICES": str(i), "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                  ENV_THREADS: str(threads)})
            for i in indices
        ]
    threads = max(1, cores() // cpu_slots)
    return [
        Slot(f"local-cpu{i}", "CPU", False, {"CUDA_VISIBLE_DEVICES": "", ENV_THREADS: str(threads)})
        for i in range(cpu_slots)
    ]
