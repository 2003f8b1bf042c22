"""The engine's read-only reports about the fleet: GPU types (table figures next to measured
throughput) and money (GPU-hours, cost, limits). Plain functions of what the engine read."""

from __future__ import annotations

from typing import Any

from mcp_server.domain import gpus
from mcp_server.domain.config import FleetConfig
from mcp_server.domain.limits import MAX_QUEUED
from mcp_server.domain.models import Cluster


def gpu_info(slots: list[Cluster], measured: dict[str, dict[str, Any]], time_budget_s: float,
             profile: str) -> dict[str, Any]:
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
    out = []
    for name, t in sorted(by_type.items()):
        entry = gpus.find(name)
        table = gpus.as_dict(entry) if entry else {}
        t.setdefault("price_per_hour_usd", table.get("price_per_hour_usd"))
        t.update(memory_gib=table.get("memory_gib"), peak_bf16_tflops=table.get("peak_bf16_tflops"),
                 bandwidth_tbs=table.get("bandwidth_tbs"))
        m = measured.get(name)
        t["measured"] = None if not m else {
            "runs": m["runs"],
            "mean_steps": m["mean_num_steps"],
            "mean_tokens_per_s": m["mean_tokens_per_s"],
            "mean_training_seconds": m["mean_training_seconds"],
            "mean_peak_vram_mb": m["mean_peak_vram_mb"],
            "best_val_bpb": m["best_val_bpb"],
        }
        out.append(t)
    notes = [f"Training budget {time_budget_s:g} s per run (profile {profile}); a faster GPU fits more "
             "steps, so results are compared only within one GPU type."]
    if any(t["simulated"] for t in out):
        notes.append("SIMULATION: some slots are local CPU/GPU slots LABELLED as GPU types (config slot_labels); "
                     "their table figures describe the label, not the hardware that ran.")
    return {"gpu_types": out, "clusters": [c.model_dump() for c in slots], "notes": notes}


def budget_status(usage: dict[str, Any], counts: dict[str, int], slots: list[Cluster], config: FleetConfig,
                  notes: list[str], waiting_for_slot: int = 0) -> dict[str, Any]:
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
    return {
        "gpu_hours_spent": round(spent, 6),
        "gpu_hours_finished_runs": round(usage["gpu_hours"], 6),
        "gpu_hours_in_flight": round(usage["gpu_hours_in_flight"], 6),
        "gpu_hours_by_type": usage["gpu_hours_by_type"],
        "gpu_hour_budget": budget,
        "gpu_hours_left": None if budget is None else round(max(0.0, budget - spent), 6),
        "estimated_cost_usd": round(usage["cost_usd"] + usage["cost_usd_in_flight"], 4),
        "cost_per_hour_now": cost_now,
        "clusters_alive": len(slots),
        "max_clusters": config.max_clusters,
        "experiments_live": counts.get("queued", 0) + counts.get("running", 0),
        "experiments_queued": counts.get("queued", 0),
        "experiments_running": max(0, counts.get("running", 0) - waiting_for_slot),
        "experiments_waiting_for_slot": waiting_for_slot,
        "experiments_by_status": counts,
        "max_concurrent": config.max_concurrent,
        "max_live": MAX_QUEUED,
        "notes": notes,
    }
