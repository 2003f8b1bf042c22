"""Research memory: analyze_wave (the statistics of a factorial wave) and session_digest (the
session so far, bounded, for an agent that lost its context)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel, Field

from mcp_server.domain import limits
from mcp_server.domain.digest import SessionDigest
from mcp_server.domain.tool_names import Tool
from mcp_server.domain.wave_analysis import WaveAnalysis
from mcp_server.surface.tools.common import READ_ONLY, WaveId, engine, tool_errors


class WaveAnalysisResult(BaseModel):
    # A plain object in the schema on purpose: the full model (domain/wave_analysis.WaveAnalysis)
    # has ~60 nullable numbers, and a client that validates results against the output schema
    # (the Python SDK's does, with jsonschema) spends ~30 ms on it per call at 10k experiments.
    analysis: dict[str, Any] = Field(description=(
        "wave_id, metric, method (the multiple-comparison correction), live, notes, and by_gpu_type: GPU type -> "
        "{noise, noise_dof, balanced, crashed_cells, chance (false 'improvements' chance alone would give), "
        "expected_false_improvements, axes: [{axis, reference_level, reference_is_control, best_level, levels: "
        "[{level, mean, se, runs, delta, delta_se, p_value, p_holm, verdict}]}], interactions: [{axes, row_levels, "
        "col_levels, means, deviation, deviation_se, best_row_by_col, best_col_by_row, best_level_changes, "
        "beyond_noise}], control, cells: [{overrides, mean, runs, failed, delta, p_holm, verdict, experiment_ids}], "
        "best_cell, best_combination: {overrides, ran, mean, predicted_mean}, notes}. Verdicts: improvement | "
        "within_noise | worse | reference | no_data | no_noise_estimate; delta = mean - reference (metric units)."))
    cells_omitted: dict[str, int] = Field(
        default_factory=dict, description=f"GPU type -> cells not listed (at most {limits.TOOL_WAVE_CELLS} are: those "
        "with an improvement/worse verdict, then the best, then those without a result).")
    next_step: str


def _compact(res: WaveAnalysis, sort_key: Callable[[float], float]) -> tuple[WaveAnalysis, dict[str, int]]:
    """At most TOOL_WAVE_CELLS cells per GPU type, in design order: the decisive ones, then the
    best. A new object: the engine's answer is shared with later calls."""
    omitted: dict[str, int] = {}
    by_gpu = {}
    n = limits.TOOL_WAVE_CELLS
    for gpu, g in res.by_gpu_type.items():
        if len(g.cells) > n:
            cells = g.cells
            order = sorted(range(len(cells)), key=lambda i: (
                cells[i].verdict not in ("improvement", "worse"), cells[i].mean is None,
                sort_key(cells[i].mean) if cells[i].mean is not None else 0.0, i))  # type: ignore[arg-type]
            keep = set(order[:n])
            g = g.model_copy(update={"cells": [c for i, c in enumerate(cells) if i in keep]})
            omitted[gpu] = len(cells) - n
        by_gpu[gpu] = g
    return (res.model_copy(update={"by_gpu_type": by_gpu}) if omitted else res), omitted


@tool_errors
def analyze_wave(ctx: Context, wave_id: WaveId) -> WaveAnalysisResult:
    """The statistics of a factorial wave, per GPU type, so you never do them by hand: per axis and
    level the marginal mean of the metric, its standard error (noise floor and runs behind it) and
    the effect vs the control's level with a verdict; every two-way interaction table, flagged when
    the best level of one axis changes with the other; the best cell and the best combination by
    main effects; crashed cells (an unbalanced design says so). Verdicts are Holm-corrected for the
    number of comparisons, and `chance` says how many 'improvements' chance alone would give. Use
    it after every wave, before keep/promote/next wave."""
    eng = engine(ctx)
    res, omitted = _compact(eng.analyze_wave(wave_id), eng.metric.sort_key)
    wins = []
    for gpu, g in res.by_gpu_type.items():
        for ax in g.axes:
            wins += [f"{ax.axis}={lv.level!r} on {gpu}" for lv in ax.levels if lv.verdict == "improvement"]
    if res.live:
        hint = f"Partial: call {Tool.WAIT_FOR_EXPERIMENTS}(wave_id='{wave_id}') and analyse again."
    elif wins:
        hint = (f"Main effects beyond the noise: {', '.join(wins[:6])}. Launch the best combination with replicates "
                f"(or {Tool.PROMOTE} the best cell) to confirm before {Tool.KEEP_EXPERIMENT}.")
    else:
        hint = ("No main effect beyond the noise: do not keep a cell on its own luck; replicate the most "
                f"promising one, or move to another axis ({Tool.SESSION_DIGEST} lists what was tried).")
    if omitted:
        hint += (f" {sum(omitted.values())} cells are not listed (see cells_omitted); "
                 f"{Tool.FETCH_RESULTS}(wave_id='{wave_id}') lists every run.")
    return WaveAnalysisResult(analysis=res.model_dump(mode="json"), cells_omitted=omitted, next_step=hint)


@tool_errors
def session_digest(ctx: Context) -> SessionDigest:
    """The whole session in at most ~2,500 tokens, built from the ledger: per GPU type the baseline
    and best with seeds and noise, the kept chain (what changed, effect +- noise, your reasons),
    every train.py constant explored with its levels and best level, code changes and verdicts,
    near misses, crash classes, what is live and when it ends, budget, and the next step. Use it
    after a context compaction or whenever you doubt what was tried, instead of paging through
    fetch_results."""
    return engine(ctx).session_digest()


def register(server: MCPServer) -> None:
    server.add_tool(analyze_wave, name=Tool.ANALYZE_WAVE, title="Analyse a factorial wave", annotations=READ_ONLY)
    server.add_tool(session_digest, name=Tool.SESSION_DIGEST, title="Session digest (research memory)",
                    annotations=READ_ONLY)
