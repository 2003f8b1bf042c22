"""Clusters, GPUs and money: get_gpu_info, list_clusters, budget_status, provision_clusters,
teardown_clusters."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from mcp_server.domain.models import Cluster
from mcp_server.surface.tools.common import ClusterName, OptGpuType, engine, tool_errors

# -- outputs -----------------------------------------------------------------------------------


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


class ClusterList(BaseModel):
    clusters: list[Cluster]
    total: int
    next_step: str


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


class ProvisionResult(BaseModel):
    provisioned: list[Cluster]
    clusters_total: int
    next_step: str


class TeardownResult(BaseModel):
    removed: list[str]
    clusters_left: int
    next_step: str


# -- mapping from the engine's dicts ----------------------------------------------------------


def _num(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def gpu_info_of(raw: dict[str, Any]) -> GpuInfo:
    types = []
    for row in raw.get("gpu_types") or raw.get("types") or []:
        measured = row.get("measured")
        types.append(GpuTypeInfo(
            gpu_type=row.get("gpu_type") or row.get("name") or "?",
            clusters=int(_num(row, "clusters", "slots") or 0),
            gpus=int(_num(row, "gpus", "gpu_count") or 0),
            memory_gb=_num(row, "memory_gib", "memory_gb"),
            bf16_tflops=_num(row, "peak_bf16_tflops", "bf16_tflops"),
            mem_bandwidth_tbs=_num(row, "bandwidth_tbs", "mem_bandwidth_tbs"),
            cost_per_hour=_num(row, "price_per_hour_usd", "cost_per_hour"),
            simulated=bool(row.get("simulated", False)),
            cluster_names=list(row.get("cluster_names") or [])[:64],
            measured=MeasuredThroughput.model_validate(measured) if isinstance(measured, dict) else None,
        ))
    return GpuInfo(gpu_types=types, notes=list(raw.get("notes") or []))


def budget_of(raw: dict[str, Any]) -> BudgetStatus:
    return BudgetStatus(
        gpu_hours_spent=float(_num(raw, "gpu_hours_spent", "gpu_hours") or 0.0),
        gpu_hour_budget=_num(raw, "gpu_hour_budget"),
        gpu_hours_left=_num(raw, "gpu_hours_left"),
        estimated_cost_usd=_num(raw, "estimated_cost_usd", "cost_usd"),
        clusters_alive=int(_num(raw, "clusters_alive", "clusters") or 0),
        max_clusters=int(_num(raw, "max_clusters") or 0),
        experiments_live=int(_num(raw, "experiments_live", "live") or 0),
        experiments_running=int(_num(raw, "experiments_running") or 0),
        experiments_waiting_for_slot=int(_num(raw, "experiments_waiting_for_slot") or 0),
        experiments_queued=int(_num(raw, "experiments_queued") or 0),
        gpu_hours_by_type={str(k): float(v or 0.0) for k, v in (raw.get("gpu_hours_by_type") or {}).items()},
        max_concurrent=int(_num(raw, "max_concurrent") or 0),
        cost_per_hour_now=_num(raw, "cost_per_hour_now", "cost_per_hour"),
        notes=list(raw.get("notes") or []),
    )


# -- tools -------------------------------------------------------------------------------------


@tool_errors
def get_gpu_info(ctx: Context) -> GpuInfo:
    """GPU types in the fleet with their specs, $/hour and MEASURED throughput (steps and tokens per
    time budget from finished runs). Use it at the start of a session and before choosing which tier
    screens hypotheses (the common one) and which confirms (the fast one). Results on different GPU
    types are never comparable: a faster GPU fits more steps into the same budget."""
    return gpu_info_of(engine(ctx).gpu_info())


@tool_errors
def list_clusters(ctx: Context) -> ClusterList:
    """Every cluster/slot with its GPU type, state, $/hour and the experiments running on it. Use it
    to see free capacity before launching, and to find names for teardown_clusters."""
    clusters = engine(ctx).list_clusters()
    busy = sum(1 for c in clusters if c.running)
    ahead = sum(len(c.queued_ahead) for c in clusters)
    if not clusters:
        hint = "No clusters: call provision_clusters(count=N, gpu_type=...) before launching experiments."
    else:
        hint = (f"{busy} of {len(clusters)} busy" + (f", {ahead} more queued ahead behind them" if ahead else "")
                + ". Launch with launch_wave / launch_experiment; queued experiments start as clusters free up.")
    return ClusterList(clusters=clusters, total=len(clusters), next_step=hint)


@tool_errors
def budget_status(ctx: Context) -> BudgetStatus:
    """GPU-hours and estimated cost spent so far, the limits the server enforces (max clusters,
    max concurrent experiments, GPU-hour budget) and the clusters alive. Use it before a large wave
    and whenever a launch is refused for a limit."""
    return budget_of(engine(ctx).budget_status())


@tool_errors
def provision_clusters(
    ctx: Context,
    count: Annotated[int, Field(ge=1, le=64, description="How many clusters/slots to bring up.")],
    gpu_type: OptGpuType = None,
) -> ProvisionResult:
    """Bring up more clusters (SkyPilot) or slots (local) of a GPU type, to run experiments on.
    Use it at the start of a session or to widen the fleet; the server refuses to go past its
    max-clusters limit and says so. Clusters autostop when idle; call teardown_clusters at the end."""
    eng = engine(ctx)
    new = eng.provision_clusters(count, gpu_type)
    total = len(eng.list_clusters())
    return ProvisionResult(
        provisioned=new, clusters_total=total,
        next_step="Launch a baseline with replicates: launch_experiment(description='baseline', replicates=3).",
    )


@tool_errors
def teardown_clusters(
    ctx: Context,
    names: Annotated[list[ClusterName] | None, Field(max_length=128, description="Clusters to remove (list_clusters shows names).")] = None,
    all_clusters: Annotated[bool, Field(description="Set true (and leave names out) to remove every cluster of this session.")] = False,
) -> TeardownResult:
    """Stop and delete clusters. Experiments running on them are cancelled (they end as 'cancelled',
    with their logs). Use it when the session ends, or to drop idle or broken clusters. Destructive:
    name the clusters, or pass all_clusters=true to remove them all."""
    if bool(names) == bool(all_clusters):
        raise ToolError(
            "teardown_clusters needs exactly one of: names=['<cluster>', ...] (see list_clusters) or "
            "all_clusters=true. Nothing was removed."
        )
    eng = engine(ctx)
    removed = eng.teardown_clusters(None if all_clusters else names)
    left = len(eng.list_clusters())
    return TeardownResult(
        removed=removed, clusters_left=left,
        next_step=("All clusters are gone; provision_clusters brings new ones up." if left == 0
                   else f"{left} clusters remain (list_clusters)."),
    )


READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)


def register(server: MCPServer) -> None:
    server.add_tool(get_gpu_info, title="GPU types, specs and measured throughput", annotations=READ_ONLY)
    server.add_tool(list_clusters, title="List clusters", annotations=READ_ONLY)
    server.add_tool(budget_status, title="Budget and limits", annotations=READ_ONLY)
    server.add_tool(
        provision_clusters, title="Provision clusters",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                                    open_world_hint=True),
    )
    server.add_tool(
        teardown_clusters, title="Tear down clusters",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True,
                                    open_world_hint=True),
    )
