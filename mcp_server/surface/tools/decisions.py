"""Decisions about finished experiments: keep_experiment (moves the branch), discard_experiment."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from mcp_server.domain.tool_names import Tool
from mcp_server.surface.tools.common import ExperimentBrief, ExperimentId, OptReason, engine, tool_errors


class DecisionResult(BaseModel):
    experiment: ExperimentBrief
    branch: str | None = Field(None, description="The session branch (keep only).")
    commit: str | None = Field(None, description="Commit the branch now points to (keep only).")
    verdict: str | None = Field(None, description=f"Its verdict vs its reference (the words of "
                                f"{Tool.WAIT_FOR_EXPERIMENTS} and {Tool.LEADERBOARD}).")
    within_noise: bool = Field(False, description="True when the result was within the noise of its reference.")
    reason: str | None = Field(None, description="The reason recorded with the decision.")
    next_step: str


@tool_errors
def keep_experiment(
    ctx: Context,
    experiment_id: ExperimentId,
    force: Annotated[bool, Field(description="Reset the branch to the snapshot even when the branch has moved "
                                 "since it was taken (only after a keep was refused for that reason).")] = False,
    reason: OptReason = None,
) -> DecisionResult:
    """Adopt a finished experiment's code: the session branch moves to its snapshot and the
    workspace's train.py becomes that code, so the next experiments build on it. Use it for a
    verdict of 'improvement' (beyond the noise floor) on the GPU type you care about. A result
    within the noise of its reference is kept only with a reason (e.g. it simplifies the code)."""
    kept = engine(ctx).keep(experiment_id, force=force, reason=reason)
    noisy = (f"Kept although within the noise of its reference (reason on record: {kept.experiment.reason}). "
             if kept.within_noise else "")
    return DecisionResult(
        experiment=ExperimentBrief.short(kept.experiment, engine(ctx).metric, result=True), branch=kept.branch,
        commit=kept.commit,
        verdict=kept.verdict, within_noise=kept.within_noise, reason=kept.experiment.reason,
        next_step=noisy + "train.py now holds the kept code. Re-measure the baseline noise if the model changed a "
        "lot, then launch the next wave from it.",
    )


@tool_errors
def discard_experiment(ctx: Context, experiment_id: ExperimentId, reason: OptReason = None) -> DecisionResult:
    """Record that a finished experiment is not adopted (the branch and train.py do not move; the
    result stays in the ledger). Use it for 'worse' or 'within_noise' results you will not pursue."""
    discarded = engine(ctx).discard(experiment_id, reason=reason)
    return DecisionResult(experiment=ExperimentBrief.short(discarded.experiment, engine(ctx).metric, result=True),
                          verdict=discarded.verdict,
                          within_noise=discarded.within_noise, reason=discarded.experiment.reason,
                          next_step=f"Recorded. {Tool.LAUNCH_WAVE} tries the next idea.")


def register(server: MCPServer) -> None:
    server.add_tool(keep_experiment, name=Tool.KEEP_EXPERIMENT, title="Keep an experiment (move the branch)",
                    annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True,
                                                idempotent_hint=True, open_world_hint=False))
    server.add_tool(discard_experiment, name=Tool.DISCARD_EXPERIMENT, title="Discard an experiment",
                    annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                                idempotent_hint=True, open_world_hint=False))
