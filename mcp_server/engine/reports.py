"""The engine's read-only reports about the fleet: GPU types (table figures next to measured
throughput) and money (GPU-hours, cost, limits). Plain functions of what the engine read."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from mcp_server.domain import gpus
from mcp_server.domain.config import FleetConfig
from mcp_server.domain.models import Cluster
from mcp_server.engine.blockers import Blocker


class MeasuredThroughput(BaseModel):
    runs: int = Field(description="Finished runs measured on this GPU type.")
    mean_steps: float | None = Field(None, description="Optimizer steps within the time budget (mean).")
    mean_tokens_per_s: float | None = Field(None, description="Training tokens per second (mean).")
    mean_training_seconds: float | None = None
    mean_peak_vram_mb: float | None = None
    best_val_bpb: float | None = None


class GpuTypeInfo(BaseModel):
    gpu_type: str
    clusters: int = Field(description="Clusters/slots of this type that are up or coming up.")
    gpus: int = Field(description="GPUs of this type across those clusters.")
    memory_gb: float | None = None
    bf16_tflops: float | None = Field(None, description="Peak dense bf16 TFLOP/s per GPU (spec sheet).")
    mem_bandwidth_tbs: float | None = Field(None, description="Memory bandwidth TB/s per GPU (spec sheet).")
    cost_per_hour: float | None = Field(None, description="$/hour per cluster where known.")
    simulated: bool = Field(False, description="True when the type is only a label on a local slot (simulation).")
    cluster_names: list[str] = Field(default_factory=list)
    measured: MeasuredThroughput | None = Field(
        None, description="Measured on this fleet's finished runs: a faster tier fits more steps in the budget."
    )


class GpuInfo(BaseModel):
    gpu_types: list[GpuTypeInfo]
    notes: list[str] = Field(default_factory=list)


class BudgetStatus(BaseModel):
    gpu_hours_spent: float = Field(description="GPU-hours used by experiments so far.")
    gpu_hour_budget: float | None = Field(None, description="Launches are refused past this; null = no budget.")
    gpu_hours_left: float | None = None
    gpu_hours_by_type: dict[str, float] = Field(default_factory=dict)
    estimated_cost_usd: float | None = Field(None, description="Estimated spend where $/hour is known.")
    clusters_alive: int
    max_clusters: int
    experiments_live: int = Field(description="Queued + running now.")
    experiments_running: int = Field(0, description="Training now.")
    experiments_waiting_for_slot: int = Field(0, description="Submitted, queued ahead behind a running job on "
                                              "their slot; they start when it ends.")
    experiments_queued: int = 0
    max_concurrent: int
    cost_per_hour_now: float | None = Field(None, description="$/hour of the clusters up now, where known.")
    notes: list[str] = Field(default_factory=list)
    blocked: list[Blocker] = Field(default_factory=list, description="Queued experiments that cannot start until "
                                   "the fix is made (data preparation failed, no slot of their GPU type).")


def gpu_info(slots: list[Cluster], measured: dict[str, dict[str, Any]], time_budget_s: float,
             profile: str) -> GpuInfo:
    """Per GPU type: slots, table figures (memory, peak bf16 TFLOP/s, bandwidth, $/h) and the
    throughput `measured` by finished runs (`Ledger.throughput_by_gpu`)."""
    by_type: dict[str, dict[str, Any]] = {}
    for c in slots:
        if c.state == "gone":
            continue
        t = by_type.setdefault(c.gpu_type, {"gpu_type": c.gpu_type, "clusters": 0, "gpus": 0,
                                            "simulated": False, "cluster_names": []})
        t["clusters"] += 1
        t["gpus"] += c.gpu_count
        t["simulated"] = t["simulated"] or c.simulated
        t["cluster_names"].append(c.name)
        if c.cost_per_hour is not None:
            t["price_per_hour_usd"] = c.cost_per_hour
    for name in measured:
        by_type.setdefault(name, {"gpu_type": name, "clusters": 0, "gpus": 0, "simulated": False,
                                  "cluster_names": []})
    out: list[GpuTypeInfo] = []
    for name, t in sorted(by_type.items()):
        entry = gpus.find(name)
        m = measured.get(name)
        out.append(GpuTypeInfo(
            gpu_type=name, clusters=t["clusters"], gpus=t["gpus"], simulated=t["simulated"],
            cluster_names=t["cluster_names"][:64],
            memory_gb=entry.memory_gib if entry else None, bf16_tflops=entry.peak_bf16_tflops if entry else None,
            mem_bandwidth_tbs=entry.bandwidth_tbs if entry else None,
            cost_per_hour=t.get("price_per_hour_usd", entry.price_per_hour if entry else None),
            measured=None if not m else MeasuredThroughput(
                runs=m["runs"], mean_steps=m["mean_num_steps"], mean_tokens_per_s=m["mean_tokens_per_s"],
                mean_training_seconds=m["mean_training_seconds"], mean_peak_vram_mb=m["mean_peak_vram_mb"],
                best_val_bpb=m["best_val_bpb"]),
        ))
    notes = [f"Training budget {time_budget_s:g} s per run (profile {profile}); a faster GPU fits more "
             "steps, so results are compared only within one GPU type."]
    if any(t.simulated for t in out):
        notes.append("SIMULATION: some slots are local CPU/GPU slots LABELLED as GPU types (config slot_labels); "
                     "their table figures describe the label, not the hardware that ran.")
    return GpuInfo(gpu_types=out, notes=notes)


def budget_status(usage: dict[str, Any], counts: dict[str, int], slots: list[Cluster], config: FleetConfig,
                  notes: list[str], waiting_for_slot: int = 0, blocked: list[Blocker] | None = None) -> BudgetStatus:
    """GPU-hours and estimated cost spent (`Ledger.usage`), the limits, clusters alive (slots not
    gone), experiments live (`Ledger.count_by_status`): running = training now, plus
    `waiting_for_slot` of them queued ahead behind another job on their slot; `notes` are the
    engine's, this adds its own."""
    slots = [c for c in slots if c.state != "gone"]
    spent = usage["gpu_hours"] + usage["gpu_hours_in_flight"]
    budget = config.gpu_hour_budget
    cost_now = sum((c.cost_per_hour or 0.0) * c.gpu_count for c in slots)
    notes = list(notes)
    if not any(c.cost_per_hour for c in slots):
        notes.append("Cost is estimated from cluster prices; local slots cost nothing here.")
    return BudgetStatus(
        gpu_hours_spent=round(spent, 6),
        gpu_hours_by_type={str(k): float(v or 0.0) for k, v in usage["gpu_hours_by_type"].items()},
        gpu_hour_budget=budget,
        gpu_hours_left=None if budget is None else round(max(0.0, budget - spent), 6),
        estimated_cost_usd=round(usage["cost_usd"] + usage["cost_usd_in_flight"], 4),
        cost_per_hour_now=cost_now,
        clusters_alive=len(slots),
        max_clusters=config.max_clusters,
        experiments_live=counts.get("queued", 0) + counts.get("running", 0),
        experiments_queued=counts.get("queued", 0),
        experiments_running=max(0, counts.get("running", 0) - waiting_for_slot),
        experiments_waiting_for_slot=waiting_for_slot,
        max_concurrent=config.max_concurrent,
        notes=notes,
        blocked=blocked or [],
    )
