"""Clusters, GPUs and money: get_gpu_info, list_clusters, budget_status, provision_clusters,
teardown_clusters."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from mcp_server.domain import limits
from mcp_server.domain.models import Cluster
from mcp_server.domain.tool_names import Tool
from mcp_server.engine.reports import BudgetStatus, GpuInfo
from mcp_server.surface.tools.common import READ_ONLY, ClusterName, OptGpuType, engine, fit, tool_errors

# -- outputs -----------------------------------------------------------------------------------


class ClusterList(BaseModel):
    clusters: list[Cluster] = Field(description="From offset on, as many as the result's size bound holds.")
    total: int
    next_offset: int | None = Field(None, description="Pass as offset for the rest; null when all are listed.")
    next_step: str


class ProvisionResult(BaseModel):
    provisioned: list[Cluster]
    clusters_total: int
    next_step: str


class TeardownResult(BaseModel):
    removed: list[str]
    clusters_left: int
    next_step: str


# -- tools -------------------------------------------------------------------------------------


@tool_errors
def get_gpu_info(ctx: Context) -> GpuInfo:
    """GPU types in the fleet with their specs, $/hour and MEASURED throughput (steps and tokens per
    time budget from finished runs). Use it at the start of a session and before choosing which tier
    screens hypotheses (the common one) and which confirms (the fast one). Results on different GPU
    types are never comparable: a faster GPU fits more steps into the same budget."""
    return engine(ctx).gpu_info()


@tool_errors
def list_clusters(
    ctx: Context,
    offset: Annotated[int, Field(ge=0, le=limits.MAX_LIST_OFFSET, description="Skip this many (a big fleet's "
                                 "list comes in pages).")] = 0,
) -> ClusterList:
    """Every cluster/slot with its GPU type, state, $/hour and the experiments running on it. Use it
    to see free capacity before launching, and to find names for teardown_clusters."""
    clusters = engine(ctx).list_clusters()
    page = clusters[offset:]
    page = page[:fit(page)]
    nxt = offset + len(page) if offset + len(page) < len(clusters) else None
    busy = sum(1 for c in clusters if c.running)
    ahead = sum(len(c.queued_ahead) for c in clusters)
    if not clusters:
        hint = f"No clusters: call {Tool.PROVISION_CLUSTERS}(count=N, gpu_type=...) before launching experiments."
    else:
        hint = (f"{busy} of {len(clusters)} busy" + (f", {ahead} more queued ahead behind them" if ahead else "")
                + f". Launch with {Tool.LAUNCH_WAVE} / {Tool.LAUNCH_EXPERIMENT}; "
                "queued experiments start as clusters free up.")
    if nxt is not None:
        hint += f" {len(clusters) - nxt} more: call {Tool.LIST_CLUSTERS}(offset={nxt})."
    return ClusterList(clusters=page, total=len(clusters), next_offset=nxt, next_step=hint)


@tool_errors
def budget_status(ctx: Context) -> BudgetStatus:
    """GPU-hours and estimated cost spent so far, the limits the server enforces (max clusters,
    max concurrent experiments, GPU-hour budget) and the clusters alive. Use it before a large wave
    and whenever a launch is refused for a limit."""
    return engine(ctx).budget_status()


@tool_errors
def provision_clusters(
    ctx: Context,
    count: Annotated[int, Field(ge=1, le=limits.MAX_PROVISION, description="How many clusters/slots to bring up.")],
    gpu_type: OptGpuType = None,
) -> ProvisionResult:
    """Bring up more clusters of a GPU type to run experiments on (SkyPilot backend). Use it at the
    start of a session or to widen the fleet; the server refuses to go past its max-clusters limit
    and says so. Clusters autostop when idle; call teardown_clusters at the end. On the local
    backend the slots are this machine's, fixed when the server starts: the call is refused with
    the server flag that changes them."""
    eng = engine(ctx)
    new = eng.provision_clusters(count, gpu_type)
    total = len(eng.list_clusters())
    return ProvisionResult(
        provisioned=new, clusters_total=total,
        next_step=f"Launch a baseline with replicates: {Tool.LAUNCH_EXPERIMENT}(description='baseline', replicates=3).",
    )


@tool_errors
def teardown_clusters(
    ctx: Context,
    names: Annotated[list[ClusterName] | None,
                     Field(max_length=limits.MAX_TEARDOWN_NAMES,
                           description=f"Clusters to remove ({Tool.LIST_CLUSTERS} shows names).")] = None,
    all_clusters: Annotated[bool, Field(description="Set true (and leave names out) to remove every cluster "
                                        "of this session.")] = False,
) -> TeardownResult:
    """Stop and delete clusters. Experiments running on them are cancelled (they end as 'cancelled',
    with their logs). Use it when the session ends, or to drop idle or broken clusters. Destructive:
    name the clusters, or pass all_clusters=true to remove them all."""
    if bool(names) == bool(all_clusters):
        raise ToolError(
            f"{Tool.TEARDOWN_CLUSTERS} needs exactly one of: names=['<cluster>', ...] (see {Tool.LIST_CLUSTERS}) or "
            "all_clusters=true. Nothing was removed."
        )
    eng = engine(ctx)
    removed = eng.teardown_clusters(None if all_clusters else names)
    left = len(eng.list_clusters())
    if not removed and eng.fixed_slots:
        hint = ("Nothing was removed: local slots are this machine's own, with nothing to stop or pay for; "
                "stopping the server frees the machine.")
    elif left == 0:
        hint = f"All clusters are gone; {Tool.PROVISION_CLUSTERS} brings new ones up."
    else:
        hint = f"{left} clusters remain ({Tool.LIST_CLUSTERS})."
    return TeardownResult(removed=removed, clusters_left=left, next_step=hint)


def register(server: MCPServer) -> None:
    server.add_tool(get_gpu_info, name=Tool.GET_GPU_INFO, title="GPU types, specs and measured throughput",
                    annotations=READ_ONLY)
    server.add_tool(list_clusters, name=Tool.LIST_CLUSTERS, title="List clusters", annotations=READ_ONLY)
    server.add_tool(budget_status, name=Tool.BUDGET_STATUS, title="Budget and limits", annotations=READ_ONLY)
    server.add_tool(
        provision_clusters, name=Tool.PROVISION_CLUSTERS, title="Provision clusters",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                                    open_world_hint=True),
    )
    server.add_tool(
        teardown_clusters, name=Tool.TEARDOWN_CLUSTERS, title="Tear down clusters",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True,
                                    open_world_hint=True),
    )
