"""Research memory: analyze_wave (the statistics of a factorial wave) and session_digest (the
session so far, bounded, for an agent that lost its context)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from mcp_server.domain import limits
from mcp_server.domain.digest import SessionDigest
from mcp_server.domain.tool_names import Tool
from mcp_server.domain.wave_analysis import WaveAnalysis
from mcp_server.surface.tools.common import READ_ONLY, GpuTypeStr, WaveId, chars, engine, tool_errors


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
    interactions_omitted: dict[str, int] = Field(
        default_factory=dict, description="GPU type -> two-way tables not listed to stay under the result's size "
        "bound (those whose best level does not change and that are not beyond the noise go first).")
    gpu_types_omitted: list[str] = Field(
        default_factory=list, description=f"GPU types not analysed here to stay under the size bound: call "
        f"{Tool.ANALYZE_WAVE} with gpu_type for each.")
    next_step: str


def _bounded(res: WaveAnalysis, budget: int) -> tuple[WaveAnalysis, dict[str, int], list[str]]:
    """A wide wave's analysis within `budget` characters: first the two-way tables that say
    nothing (best level unchanged, not beyond the noise) go, then every table, then the GPU types
    with the fewest runs."""
    if chars(res.model_dump(mode="json")) <= budget:
        return res, {}, []
    by_gpu = dict(res.by_gpu_type)
    dropped: dict[str, int] = {}
    for telling in (True, False):
        for gpu, g in by_gpu.items():
            keep = [t for t in g.interactions if telling and (t.best_level_changes or t.beyond_noise)]
            if len(keep) < len(g.interactions):
                dropped[gpu] = dropped.get(gpu, 0) + len(g.interactions) - len(keep)
                by_gpu[gpu] = g.model_copy(update={"interactions": keep})
        res = res.model_copy(update={"by_gpu_type": by_gpu})
        if chars(res.model_dump(mode="json")) <= budget:
            return res, dropped, []
    order = sorted(by_gpu, key=lambda t: (-sum(c.runs for c in by_gpu[t].cells), t))
    gone: list[str] = []
    while len(order) > 1 and chars(res.model_dump(mode="json")) > budget:
        gone.insert(0, order.pop())
        res = res.model_copy(update={"by_gpu_type": {t: by_gpu[t] for t in order}})
    return res, {t: n for t, n in dropped.items() if t in res.by_gpu_type}, gone


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
def analyze_wave(
    ctx: Context,
    wave_id: WaveId,
    gpu_type: Annotated[GpuTypeStr | None, Field(description="Only this GPU type (default: every type the wave "
                                                 "ran on, separately).")] = None,
) -> WaveAnalysisResult:
    """The statistics of a factorial wave, per GPU type, so you never do them by hand: per axis and
    level the marginal mean of the metric, its standard error (noise floor and runs behind it) and
    the effect vs the control's level with a verdict; every two-way interaction table, flagged when
    the best level of one axis changes with the other; the best cell and the best combination by
    main effects; crashed cells (an unbalanced design says so). Verdicts are Holm-corrected for the
    number of comparisons, and `chance` says how many 'improvements' chance alone would give. Use
    it after every wave, before keep/promote/next wave."""
    eng = engine(ctx)
    full = eng.analyze_wave(wave_id)
    if gpu_type is not None:
        if gpu_type not in full.by_gpu_type:
            ran = ", ".join(sorted(full.by_gpu_type)) or "none yet"
            raise ToolError(f"Wave {wave_id} has no runs on {gpu_type!r}; it ran on: {ran}. Call {Tool.ANALYZE_WAVE} "
                            "with one of those, or without gpu_type.")
        full = full.model_copy(update={"by_gpu_type": {gpu_type: full.by_gpu_type[gpu_type]}})
    res, omitted = _compact(full, eng.metric.sort_key)
    res, tables, gone = _bounded(res, limits.MAX_RESULT_CHARS - 1_500)   # (the rest: hints, counts)
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
    if tables:
        hint += f" {sum(tables.values())} two-way tables are not listed (see interactions_omitted)."
    if gone:
        hint += (f" Not analysed here (size bound): {', '.join(gone)}: call {Tool.ANALYZE_WAVE}(wave_id='{wave_id}', "
                 f"gpu_type='{gone[0]}').")
    return WaveAnalysisResult(analysis=res.model_dump(mode="json"), cells_omitted=omitted,
                              interactions_omitted=tables, gpu_types_omitted=gone, next_step=hint)


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
