"""Reading results: get_experiment, fetch_results, leaderboard, plot_progress."""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.types import TextContent
from pydantic import BaseModel, Field

from mcp_server.domain import limits, plot
from mcp_server.domain.analysis import Leaderboard, Verdict
from mcp_server.domain.models import Experiment, Status
from mcp_server.domain.tool_names import Tool
from mcp_server.surface.tools.common import (
    READ_ONLY,
    ExperimentBrief,
    ExperimentId,
    GpuTypeStr,
    WaveIdStr,
    chars,
    clip,
    engine,
    fit,
    fleet,
    tool_errors,
)

LOG_PAGE_MAX = limits.TOOL_LOG_PAGE_MAX
PLOT_PAGE = limits.TOOL_PLOT_PAGE
ROW_IDS = limits.TOOL_ROW_IDS

# -- outputs -----------------------------------------------------------------------------------


class ExperimentDetail(BaseModel):
    experiment: Experiment
    verdict: Verdict | None = Field(None, description="Set once it finished.")
    log: str = Field(description="One page of the run log (the tail by default).")
    log_offset: int = Field(description="Character offset of this page in the log.")
    next_log_offset: int | None = Field(None, description="Offset of the next page; null at the end of the log.")
    next_step: str


class ResultsPage(BaseModel):
    experiments: list[ExperimentBrief] = Field(description="In launch order.")
    total: int = Field(description="Experiments matching the filters.")
    offset: int
    next_offset: int | None = Field(None, description="Pass as offset to get the next page; null on the last page.")
    next_step: str


class LeaderboardResult(BaseModel):
    leaderboard: Leaderboard
    next_step: str


# -- tools -------------------------------------------------------------------------------------


@tool_errors
def get_experiment(
    ctx: Context,
    experiment_id: ExperimentId,
    log_offset: Annotated[int | None, Field(ge=0, le=10**9, description="Read the log from this character "
                                          "offset (default: the last log_limit characters).")] = None,
    log_limit: Annotated[int, Field(ge=0, le=LOG_PAGE_MAX,
                                    description="Characters of log to return (0 = none).")] = 3000,
) -> ExperimentDetail:
    """One experiment in full: code snapshot (commit, hashes), overrides, status, metrics, error,
    its verdict, and one page of its run log (the tail by default). Use it to understand a crash or a
    surprising number; page through the log with log_offset instead of asking for all of it."""
    eng = engine(ctx)
    exp = eng.get_experiment(experiment_id)
    verdicts = eng.verdicts([experiment_id]) if exp.status not in (Status.queued, Status.running) else []
    verdict = verdicts[0] if verdicts else None
    if log_limit == 0:
        text, start, nxt = "", log_offset or 0, None
    else:
        # the page shrinks until the whole result fits its size bound (a log's JSON escapes can be long)
        room = limits.MAX_RESULT_CHARS - chars(ExperimentDetail(experiment=exp, verdict=verdict, log="", log_offset=0,
                                                                 next_step="x" * 200))
        limit = min(log_limit, max(0, room))
        while True:
            text, start, nxt = read_log_page(eng, experiment_id, log_offset, limit)
            if limit == 0 or len(json.dumps(text, ensure_ascii=False)) <= room:
                break
            limit //= 2
    if nxt is not None:
        hint = f"More log: call {Tool.GET_EXPERIMENT}(experiment_id='{experiment_id}', log_offset={nxt})."
    elif exp.waiting_for_slot:
        hint = (f"Waiting for its slot: queued ahead on {exp.cluster} behind the job running there, it starts when "
                f"that one ends. Call {Tool.WAIT_FOR_EXPERIMENTS}(experiment_ids=['{experiment_id}']).")
    elif exp.status in (Status.queued, Status.running):
        hint = f"Still {exp.status.value}: call {Tool.WAIT_FOR_EXPERIMENTS}(experiment_ids=['{experiment_id}'])."
    else:
        hint = f"End of log. {Tool.KEEP_EXPERIMENT} or {Tool.DISCARD_EXPERIMENT} records your decision."
    return ExperimentDetail(experiment=exp, verdict=verdict, log=text,
                            log_offset=start, next_log_offset=nxt, next_step=hint)


def read_log_page(eng, experiment_id: str, offset: int | None, limit: int) -> tuple[str, int, int | None]:
    """(text, offset of text, next offset or None). offset None = the last `limit` characters."""
    if offset is None:
        offset = max(0, eng.log_size(experiment_id) - limit)
    text, nxt = eng.read_log(experiment_id, offset=offset, limit=limit)
    return text, offset, nxt


@tool_errors
def fetch_results(
    ctx: Context,
    status: Annotated[Literal["queued", "running", "done", "crash", "nan", "oom", "timeout", "rejected",
                              "cancelled", "lost"] | None,
                      Field(description="Only experiments with this status.")] = None,
    wave_id: Annotated[WaveIdStr | None, Field(description="Only this wave's experiments.")] = None,
    offset: Annotated[int, Field(ge=0, le=limits.MAX_LIST_OFFSET, description="Skip this many (pagination).")] = 0,
    limit: Annotated[int, Field(ge=1, le=limits.TOOL_PAGE_MAX, description="Page size.")] = 20,
) -> ResultsPage:
    """Experiments in launch order, one page at a time, optionally filtered by status or wave: id,
    description, status, GPU type, val_bpb, steps, decision. Use it to review history or find ids;
    for a ranking per GPU type use leaderboard, for one experiment's log use get_experiment."""
    exps, total = engine(ctx).experiments(status=status, wave_id=wave_id, offset=offset, limit=limit)
    metric = engine(ctx).metric
    rows = [ExperimentBrief.of(e, metric) for e in exps]
    rows = rows[:fit(rows)]           # a page stops at the result's size bound; next_offset goes on from there
    nxt = offset + len(rows) if offset + len(rows) < total else None
    if nxt is not None:
        args = "".join(f", {k}='{v}'" for k, v in (("status", status), ("wave_id", wave_id)) if v)
        hint = f"{total - nxt} more: call {Tool.FETCH_RESULTS}(offset={nxt}{args}, limit={limit})."
    else:
        hint = "End of results." if total else f"No experiments match. {Tool.LAUNCH_EXPERIMENT} starts one."
    return ResultsPage(experiments=rows, total=total, offset=offset,
                       next_offset=nxt, next_step=hint)


@tool_errors
def leaderboard(
    ctx: Context,
    gpu_type: Annotated[GpuTypeStr | None,
                        Field(description="Only this GPU type (default: every type, separately).")] = None,
    limit: Annotated[int, Field(ge=1, le=limits.TOOL_LEADERBOARD_ROWS,
                                description="Rows per GPU type (the best few are what a decision needs; "
                                "more for a review).")] = 5,
) -> LeaderboardResult:
    """Finished experiments ranked by val_bpb SEPARATELY per GPU type (never across types), with
    replicates averaged, delta vs the reference, verdict against the noise floor, and your
    keep/discard decision. Use it after a wave to pick what to keep or promote."""
    board = fit_board(compact(engine(ctx).leaderboard(gpu_type=gpu_type, limit=limit)))
    if not any(board.by_gpu_type.values()):
        hint = f"No finished experiments yet: {Tool.WAIT_FOR_EXPERIMENTS} first."
    else:
        hint = (f"{Tool.KEEP_EXPERIMENT} the best 'improvement' or {Tool.PROMOTE} the top 2-3 to the fast tier; "
                "'within_noise' is not a win.")
    return LeaderboardResult(leaderboard=board, next_step=hint)


@tool_errors
def plot_progress(ctx: Context) -> list[TextContent | Image]:
    """A chart of val_bpb per experiment in launch order, coloured by GPU type, kept ones
    highlighted, with the running best per type; also written to progress.png in the workspace.
    Use it to show the user how the session is going."""
    eng = engine(ctx)
    exps: list[Experiment] = []
    while True:
        page, total = eng.experiments(offset=len(exps), limit=PLOT_PAGE)
        exps.extend(page)
        if not page or len(exps) >= total:
            break
    path = fleet(ctx).config.workspace / "progress.png"
    png, summary = plot.render_progress(exps, path, eng.metric)
    return [TextContent(type="text", text=f"{summary} Written to {path}."), Image(data=png, format="png")]


def _group(description: str) -> str:
    """A row is a group of seeds: its first run's description without that run's ' [seed N]'."""
    return re.sub(r" \[seed \d+\]$", "", description)


def compact(board: Leaderboard) -> Leaderboard:
    """Rows keep their first few ids (none beside experiment_id for a single seed) and a one-line
    description, not the code hash (get_experiment has it): the table stays small."""
    rows = {g: [r.model_copy(update={"experiment_ids": r.experiment_ids[:ROW_IDS] if r.seeds > 1 else [],
                                     "code_hash": None,
                                     "description": clip(_group(r.description), 100)}) for r in rs]
            for g, rs in board.by_gpu_type.items()}
    return board.model_copy(update={"by_gpu_type": rows})


def fit_board(board: Leaderboard) -> Leaderboard:
    """The tables with fewer rows (the longest table's last first) until the board fits the
    result's size bound; a note says so."""
    rows = {g: list(rs) for g, rs in board.by_gpu_type.items()}
    cut = False
    while sum(chars(r) + 1 for rs in rows.values() for r in rs) > limits.RESULT_LIST_CHARS:
        longest = max(rows, key=lambda g: (len(rows[g]), g))
        if len(rows[longest]) <= 1:
            break
        rows[longest].pop()
        cut = True
    if not cut:
        return board
    shown = ", ".join(f"{g}: {len(rs)}" for g, rs in rows.items())
    note = (f"Rows per GPU type cut to stay under the result's size bound ({shown}); "
            f"{Tool.LEADERBOARD}(gpu_type=...) gives one type's table.")
    return board.model_copy(update={"by_gpu_type": rows, "notes": [*board.notes, note]})


def register(server: MCPServer) -> None:
    server.add_tool(get_experiment, name=Tool.GET_EXPERIMENT, title="Get one experiment and its log",
                    annotations=READ_ONLY)
    server.add_tool(fetch_results, name=Tool.FETCH_RESULTS, title="Fetch results (paginated)", annotations=READ_ONLY)
    server.add_tool(leaderboard, name=Tool.LEADERBOARD, title="Leaderboard per GPU type", annotations=READ_ONLY)
    server.add_tool(plot_progress, name=Tool.PLOT_PROGRESS, title="Plot progress", annotations=READ_ONLY)
