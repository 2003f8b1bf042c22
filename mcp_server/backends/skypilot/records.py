"""What SkyPilot reports, read into what the backend needs: a cluster's GPU type, state and price
from a `sky.status` record; the status vocabulary of jobs (`sky.queue`) and requests (`sky.api_status`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mcp_server.domain import gpus

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_DRIVER", "CANCELLED"}   # job statuses
STARTED = TERMINAL | {"RUNNING"}
REQUEST_DONE_BAD = {"FAILED", "CANCELLED"}                                          # request statuses


def status_value(x: Any) -> str:
    """An enum's value or the string itself: 'UP', 'SUCCEEDED'."""
    v = getattr(x, "value", x)
    return str(v) if v is not None else ""


def accelerators_of(record: Any) -> dict[str, float] | None:
    handle = getattr(record, "handle", None)
    res = getattr(handle, "launched_resources", None)
    acc = getattr(res, "accelerators", None)
    return dict(acc) if acc else None


def gpu_label(accelerators: dict[str, float] | None) -> tuple[str, int]:
    """('H100', 1) from {'H100': 1}; ('CPU', 1) without accelerators (one slot, like local)."""
    if not accelerators:
        return "CPU", 1
    name, count = next(iter(accelerators.items()))
    known = gpus.find(str(name))
    return (known.name if known else str(name)), max(1, int(math.ceil(float(count))))


@dataclass
class ClusterInfo:
    name: str
    state: str
    gpu_type: str
    gpu_count: int
    accelerators: dict[str, float] | None
    cost_per_hour: float | None
    created_at: float
    autostop: int | None = None
    cloud: str = ""                 # lower case: slurm, kubernetes, aws, ...
    cpus: float | None = None


def cluster_info(rec: Any) -> ClusterInfo:
    """A `sky.status` record as a ClusterInfo."""
    acc = accelerators_of(rec)
    gpu_type, count = gpu_label(acc)
    state = {"UP": "up", "INIT": "provisioning", "STOPPED": "stopped",
             "AUTOSTOPPING": "stopped"}.get(status_value(getattr(rec, "status", "")), "gone")
    # SkyPilot's (untyped) Resources, or None: get_cost then raises AttributeError, caught below
    res: Any = getattr(getattr(rec, "handle", None), "launched_resources", None)
    cloud = str(getattr(res, "cloud", "") or "").lower()
    cost = None
    if cloud not in ("kubernetes", "slurm", "ssh"):   # own hardware: no price to report
        try:
            c = float(res.get_cost(3600))
            cost = c if c > 0 else None
        except Exception:  # noqa: BLE001
            cost = None
        if cost is None and gpu_type != "CPU":         # rough list price (gpus.py)
            known = gpus.find(gpu_type)
            if known is not None and known.price_per_hour is not None:
                cost = round(known.price_per_hour * count, 2)
    autostop = getattr(rec, "autostop", None)
    try:
        cpus = float(str(getattr(res, "cpus", "") or "").rstrip("+"))
    except ValueError:
        cpus = None
    return ClusterInfo(cloud=cloud, cpus=cpus, name=str(rec.name), state=state, gpu_type=gpu_type, gpu_count=count,
                       accelerators=acc, cost_per_hour=cost,
                       created_at=float(getattr(rec, "launched_at", 0) or 0),
                       autostop=int(autostop) if isinstance(autostop, (int, float)) else None)
