"""A small table of GPU types: what each is, how fast, roughly what it costs.

Used to name slots (nvidia-smi's "NVIDIA H100 80GB HBM3" -> "H100"), to report GPU info to the
agent, and to estimate cost. train_template/prepare.py keeps its own peak-TFLOP/s table for MFU
(it runs where this package is not installed); tests/test_gpus.py checks the two agree.

Numbers: peak DENSE bf16 tensor-core TFLOP/s (no 2:4 sparsity; fp32 accumulate on GeForce
cards), memory bandwidth in TB/s, memory in GiB as sold (GB), SXM variants where there is one.
Prices: rough public on-demand list prices in USD per GPU-hour, as of 2026 — typical of the
big clouds and GPU clouds, not a quote; real prices vary by provider, region and commitment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mcp_server.domain.errors import InvalidInput


@dataclass(frozen=True)
class GpuType:
    name: str                        # canonical name (= SkyPilot's accelerator name): cluster.gpu_type, ledger
    memory_gib: float | None
    peak_bf16_tflops: float | None   # dense; None for CPU (no meaningful peak for MFU)
    bandwidth_tbs: float | None
    price_per_hour: float | None     # rough public on-demand USD per GPU-hour, 2026
    aliases: tuple[str, ...] = ()


GPU_TYPES: tuple[GpuType, ...] = (
    GpuType("B200", 180, 2250.0, 8.0, 6.00, ("nvidia b200", "b200-sxm", "hgx b200")),
    GpuType("H200", 141, 989.0, 4.8, 3.80, ("nvidia h200", "h200-sxm", "h200 sxm", "h200-141gb")),
    GpuType("H100", 80, 989.0, 3.35, 2.90, ("nvidia h100", "h100-sxm", "h100 sxm", "h100-80gb", "h100 80gb hbm3")),
    GpuType("A100-80GB", 80, 312.0, 2.04, 1.80,
            ("a100 80gb", "a100-sxm4-80gb", "a100 80gb sxm", "a100-80g", "a100_80gb")),
    GpuType("A100", 40, 312.0, 1.56, 1.30,
            ("a100-40gb", "a100 40gb", "a100-sxm4-40gb", "a100-pcie-40gb", "nvidia a100")),
    GpuType("L40S", 48, 362.0, 0.864, 1.00, ("nvidia l40s", "l40-s", "l40 s")),
    GpuType("L4", 24, 121.0, 0.30, 0.75, ("nvidia l4",)),
    # The A10G (AWS's variant) has half the A10's tensor rate: ~70 dense bf16 TFLOP/s (Baseten's
    # "A10 vs A10G" spec comparison), not the A10's 125 — do not copy the A10 number here.
    GpuType("A10G", 24, 70.0, 0.60, 1.00, ("nvidia a10g",)),
    GpuType("RTX4090", 24, 165.2, 1.008, 0.60, ("rtx 4090", "geforce rtx 4090", "nvidia geforce rtx 4090", "4090")),
    GpuType("RTX3090", 24, 71.0, 0.936, 0.30, ("rtx 3090", "geforce rtx 3090", "nvidia geforce rtx 3090", "3090")),
    GpuType("CPU", None, None, None, None, ("cpu", "none")),
)


def _key(text: str) -> str:
    """Case, spaces, dashes and underscores do not matter: 'rtx-4090' == 'RTX 4090' == 'rtx4090'."""
    return re.sub(r"[\s_\-]+", "", text.strip().lower())


_BY_KEY: dict[str, GpuType] = {}
for _gpu in GPU_TYPES:
    for _alias in (_gpu.name, *_gpu.aliases):
        _BY_KEY.setdefault(_key(_alias), _gpu)


def known_names() -> list[str]:
    return [g.name for g in GPU_TYPES]


def lookup(gpu_type: str) -> GpuType:
    """The table entry for a GPU name or alias (case-insensitive), e.g. 'h100', 'A100-80GB',
    'NVIDIA GeForce RTX 4090'. Raises InvalidInput listing the known names when unknown."""
    gpu = find(gpu_type)
    if gpu is None:
        raise InvalidInput(
            f"unknown GPU type {gpu_type!r}; known types: {', '.join(known_names())} "
            "(case-insensitive; e.g. 'h100' or 'A100-80GB')"
        )
    return gpu


def find(gpu_type: str) -> GpuType | None:
    """Like lookup, but None when unknown; also understands nvidia-smi / torch device names."""
    if not isinstance(gpu_type, str) or not gpu_type.strip():
        return None
    exact = _BY_KEY.get(_key(gpu_type))
    if exact is not None:
        return exact
    return _from_device_name(gpu_type)


def _from_device_name(name: str, memory_mib: float | None = None) -> GpuType | None:
    """Map a vendor device name ('NVIDIA H100 80GB HBM3', 'NVIDIA A100-SXM4-40GB') to an entry.

    Substring tests, most specific first ('l40s' before 'l4'). A plain A10 (not A10G) is not in
    the table and maps to nothing rather than borrowing A10G's numbers.
    """
    k = _key(name)
    if "b200" in k:
        return _BY_KEY[_key("B200")]
    if "h200" in k:
        return _BY_KEY[_key("H200")]
    if "h100" in k:
        return _BY_KEY[_key("H100")]
    if "a100" in k:
        big = "80gb" in k or (memory_mib is not None and memory_mib > 60 * 1024)
        return _BY_KEY[_key("A100-80GB" if big else "A100")]
    if "l40s" in k:
        return _BY_KEY[_key("L40S")]
    if re.search(r"(^|nvidia)l4$", k):
        return _BY_KEY[_key("L4")]
    if "a10g" in k:
        return _BY_KEY[_key("A10G")]
    if "4090" in k:
        return _BY_KEY[_key("RTX4090")]
    if "3090" in k:
        return _BY_KEY[_key("RTX3090")]
    return None


def normalize_device_name(name: str, memory_mib: float | None = None) -> str:
    """Canonical GPU type for a device name from nvidia-smi (memory disambiguates A100 40/80 GB).

    Unknown devices keep a cleaned-up version of their own name (never an error: a slot with an
    unlisted GPU still runs experiments; it just has no peak/price in the table).
    """
    gpu = _from_device_name(name, memory_mib) or find(name)
    if gpu is not None:
        return gpu.name
    cleaned = re.sub(r"^(nvidia|amd)\s+", "", name.strip(), flags=re.IGNORECASE)
    cleaned = re.sub(r"[^A-Za-z0-9]+", "-", cleaned).strip("-")
    return cleaned.upper() or "UNKNOWN"


def as_dict(gpu: GpuType) -> dict[str, object]:
    """JSON-friendly view (for get_gpu_info)."""
    return {
        "name": gpu.name,
        "memory_gib": gpu.memory_gib,
        "peak_bf16_tflops": gpu.peak_bf16_tflops,
        "bandwidth_tbs": gpu.bandwidth_tbs,
        "price_per_hour_usd": gpu.price_per_hour,
    }
