"""Launching and waiting: launch_experiment, launch_wave, promote, wait_for_experiments,
cancel_experiments."""

from __future__ import annotations

import functools
import logging
import time
from typing import Annotated, Any, Literal, TypedDict

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from mcp_server.domain import limits, variants
from mcp_server.domain.analysis import Verdict
from mcp_server.domain.metric import DEFAULT_METRIC, Metric
from mcp_server.domain.models import Experiment, Status, Wave
from mcp_server.domain.numbers import general
from mcp_server.domain.tool_names import Tool
from mcp_server.engine import Progress
from mcp_server.engine.blockers import Blocker
from mcp_server.surface.tools.common import (
    Description,
    ExperimentBrief,
    ExperimentIdStr,
    GpuType,
    OptBaseRef,
    OptGpuType,
    OptHypothesis,
    OptOverrides,
    OptWaveId,
    OverrideName,
    Scalar,
    WaveIdStr,
    clip,
    engine,
    fit,
    fleet,
    ids_text,
    tool_errors,
)

log = logging.getLogger("autoresearch_fleet.tools")

MAX_LISTED = limits.TOOL_LISTED
MAX_WAIT_ROWS = limits.TOOL_WAIT_ROWS

Replicates = Annotated[
    int, Field(ge=1, le=limits.MAX_REPLICATES,
               description="Runs of the same code with different seeds; 3+ measures the noise floor.")
]

# -- outputs -----------------------------------------------------------------------------------


class LaunchResult(BaseModel):
    experiments: list[ExperimentBrief]
    next_step: str


class WaveResult(BaseModel):
    wave_id: str
    kind: str = Field(description="factorial | replicates | promotion | single")
    description: str
    design: dict[str, Any] = Field(description="Axes and levels, replicates, control (a false or empty entry is "
                                   "left out).")
    experiments: list[ExperimentBrief] = Field(
        description=f"One per cell x replicate (plus the control); the first {MAX_LISTED} when there are more. "
        "Their description is what follows the wave's and the cell's overrides (the seed, or [control]); "
        "gpu_type is left out when it is the design's.")
    experiment_count: int = Field(description="Experiments in the wave.")
    next_step: str


class WaitResult(BaseModel):
    finished: list[ExperimentBrief] = Field(
        description=f"Experiments that reached a terminal status, in launch order (at most {MAX_WAIT_ROWS}: "
        "every failure and the best by the metric when more finished; see omitted), each with its value of the "
        "task's metric, its verdict vs the same-GPU-type reference (the unmodified parent code, i.e. the wave's "
        "control), delta and a one-line note (threshold, noise, seeds; what is missing). Waiting on a wave, the "
        "description is what follows the wave's and the cell's overrides (the seed, or [control]); gpu_type is "
        "left out when it is the result's gpu_type. detail=true: full rows (steps, seed, overrides) and `verdicts`.")
    verdicts: list[Verdict] = Field(
        default_factory=list,
        description="detail=true only: per listed experiment the whole verdict: delta vs the same-GPU-type "
        "reference, noise floor, threshold, replicates, the reference group's mean and size, every note.")
    gpu_type: str | None = Field(None, description="The GPU type every listed experiment ran on, when they share one "
                                 "(the rows then leave it out).")
    metric: str | None = Field(None, description="The metric of the values, e.g. 'val_bpb (lower is better)'.")
    finished_count: int = Field(description="How many of the waited-for experiments are finished.")
    omitted: int = Field(0, description=f"Finished but not listed here "
                                        f"({Tool.LEADERBOARD} / {Tool.FETCH_RESULTS} show them).")
    still_running: list[str] = Field(description=f"Experiments still queued or running (the first {MAX_LISTED}; "
                                     "still_running_count says how many).")
    still_running_count: int = Field(0, description="How many are still queued or running.")
    timed_out: bool
    interrupted: bool = Field(False, description="True when the server shut down during the wait.")
    waited_s: float = Field(0.0, description="Seconds this call blocked (at most the server's cap, see next_step).")
    blocked: list[Blocker] = Field(default_factory=list, description="Queued experiments that cannot start until "
                                   "the fix is made; waiting again changes nothing for them.")
    next_step: str


class CancelResult(BaseModel):
    cancelled: list[ExperimentBrief] = Field(description=f"Their state now (the first {MAX_LISTED}).")
    cancelled_count: int = Field(description="How many of them are cancelled now; one that had already finished "
                                             "keeps its status and result.")
    next_step: str


# -- helpers -----------------------------------------------------------------------------------


def wave_result(eng: Any, wave: Wave) -> WaveResult:
    listed, _ = eng.experiments(wave_id=wave.id, offset=0, limit=MAX_LISTED)
    gpu = wave.design.get("gpu_type")
    rows = [_in_wave(ExperimentBrief.short(e), wave) for e in listed]
    rows = [r.model_copy(update={"gpu_type": None}) if r.gpu_type == gpu else r for r in rows]
    rows = rows[:fit(rows)]
    hint = _chosen_type(wave.design) + _wait_hint(wave_id=wave.id)
    if len(wave.experiment_ids) > len(rows):
        hint += f" {Tool.FETCH_RESULTS}(wave_id='{wave.id}', offset={len(rows)}) lists the rest."
    design = {k: v for k, v in wave.design.items() if v is not False and v != []}   # (false / empty: unsaid)
    return WaveResult(wave_id=wave.id, kind=wave.kind, description=wave.description, design=design,
                      experiments=rows,
                      experiment_count=len(wave.experiment_ids), next_step=hint)


def _in_wave(row: ExperimentBrief, wave: Wave) -> ExperimentBrief:
    """A wave member's row without what the wave or the row already says: its description's
    prefix (the wave's description) and its cell's label (the row's overrides say it)."""
    desc = row.description
    if wave.description and desc.startswith(wave.description) and desc != wave.description:
        desc = desc[len(wave.description):].strip()
    label = f"[{variants.describe(row.overrides)}]" if row.overrides else ""
    if label and label in desc:
        desc = " ".join(desc.replace(label, "", 1).split()) or desc
    return row.model_copy(update={"description": desc})


def _chosen_type(design: dict[str, Any]) -> str:
    if not design.get("gpu_type_chosen"):
        return ""
    return (f"All of them run on {design['gpu_type']} (the type with the most slots; pass gpu_type to choose), "
            "so they compare with each other and measure that type's noise. ")


def _pick_rows(finished: list[Experiment], metric: Metric = DEFAULT_METRIC) -> list[Experiment]:
    """All of them when few; else every failure (up to a third) and the best by the task's metric."""
    if len(finished) <= MAX_WAIT_ROWS:
        return finished
    failed = [e for e in finished if metric.value(e) is None][: MAX_WAIT_ROWS // 3]
    failed_ids = {e.id for e in failed}
    done = sorted((e for e in finished if e.id not in failed_ids and metric.value(e) is not None),
                  key=lambda e: metric.sort_key(metric.value(e)))  # type: ignore[arg-type]
    keep = failed_ids | {e.id for e in done[: MAX_WAIT_ROWS - len(failed)]}
    return [e for e in finished if e.id in keep]


def _wait_hint(ids: list[str] | None = None, wave_id: str | None = None) -> str:
    if wave_id:
        return (f"Call {Tool.WAIT_FOR_EXPERIMENTS}(wave_id='{wave_id}') to block until they finish "
                "(progress is reported).")
    return f"Call {Tool.WAIT_FOR_EXPERIMENTS}(experiment_ids={ids_text(ids or [])}) to block until they finish."


# -- tools -------------------------------------------------------------------------------------


@tool_errors
def launch_experiment(
    ctx: Context,
    description: Description,
    overrides: OptOverrides = None,
    source: Annotated[str | None, Field(max_length=limits.MAX_SOURCE_PATH,
                                        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./-]*\.py$",
                                        description="A .py file in the workspace to run instead of train.py "
                                        "(relative path), e.g. a variant you wrote to 'variants/rope.py'.")] = None,
    base: OptBaseRef = None,
    gpu_type: OptGpuType = None,
    replicates: Replicates = 1,
    seed: Annotated[int | None, Field(ge=0, le=limits.MAX_FIRST_SEED, description="Seed of the first replicate; "
                                      "the others use seed+1, seed+2, ... (default: seeds from 42 up that this "
                                      "code has not used on this GPU type).")] = None,
    priority: Annotated[int, Field(ge=limits.USER_PRIORITY[0], le=limits.USER_PRIORITY[1],
                                   description="Higher runs first among queued experiments.")] = 0,
    hypothesis: OptHypothesis = None,
    allow_rerun: Annotated[bool, Field(description="Run it even when this exact code already ran with this seed "
                                       "on this GPU type (refused by default: a wasted slot).")] = False,
) -> LaunchResult:
    """Snapshot the current train.py (with optional constant overrides) and queue it to run for the
    fixed time budget. Use it for a baseline (replicates=3), a single hand-written change, or a
    re-run. For several values of several knobs at once use launch_wave instead. More replicates of
    existing code: base='<id>' with no overrides and no seed picks unused seeds. The agent's branch
    does not move; returns at once with ids for wait_for_experiments."""
    if source is not None and base is not None:
        raise ToolError("Give either source (a file in the workspace) or base (an experiment id or commit to "
                        "derive from), not both. Nothing was launched.")
    if source is not None and ".." in source.split("/"):
        raise ToolError(f"source must be a path inside the workspace without '..' (got {source!r}), "
                        "e.g. 'variants/rope.py'. Nothing was launched.")
    eng = engine(ctx)
    exps = eng.launch_experiment(
        description=description, overrides=overrides or None, source=source, commit=base,
        gpu_type=gpu_type, replicates=replicates, seed=seed, priority=priority, hypothesis=hypothesis,
        allow_rerun=allow_rerun,
    )
    # replicates form a wave whose design records whether the server chose their GPU type
    chosen = _chosen_type(eng.get_wave(exps[0].wave_id).design) if exps[0].wave_id else ""
    return LaunchResult(experiments=[ExperimentBrief.short(e) for e in exps],
                        next_step=chosen + _wait_hint([e.id for e in exps]))


@tool_errors
def launch_wave(
    ctx: Context,
    description: Description,
    axes: Annotated[
        dict[OverrideName, Annotated[list[Scalar], Field(min_length=1, max_length=limits.MAX_LEVELS)]],
        Field(min_length=1, max_length=limits.MAX_AXES,
              description="Factorial design: constant name -> levels, e.g. {\"MATRIX_LR\": [0.03, 0.06], "
              "\"DEPTH\": [6, 8]} runs every combination (here 4 cells). 1-4 axes, 1-8 levels each."),
    ],
    replicates: Replicates = 1,
    include_control: Annotated[bool,
                               Field(description="Also run the unchanged base code as the wave's control.")] = True,
    base: OptBaseRef = None,
    gpu_type: OptGpuType = None,
    hypothesis: OptHypothesis = None,
) -> WaveResult:
    """Launch a factorial wave: every combination of the levels of 2-3 knobs (plus a control), all
    at once, so one wave measures main effects and interactions. Use it instead of one-at-a-time
    changes whenever the fleet has free clusters. Returns at once with the wave id."""
    eng = engine(ctx)
    wave = eng.launch_wave(description=description, axes=axes, replicates=replicates,
                           include_control=include_control, base=base, gpu_type=gpu_type, hypothesis=hypothesis)
    return wave_result(eng, wave)


@tool_errors
def promote(
    ctx: Context,
    experiment_ids: Annotated[list[ExperimentIdStr], Field(min_length=1, max_length=limits.MAX_PROMOTE,
                                                       description="The best few from a screening wave (2-3).")],
    gpu_type: GpuType,
    replicates: Replicates = 3,
) -> WaveResult:
    """Re-run the best few experiments' exact code on another (usually the fast) GPU tier with
    replicates, against a same-tier reference, to confirm that a screening win is real. Use it after
    a screening wave on the common tier; compare the promoted results only within the new tier."""
    eng = engine(ctx)
    wave = eng.promote(experiment_ids, gpu_type=gpu_type, replicates=replicates)
    return wave_result(eng, wave)


@tool_errors
async def wait_for_experiments(
    ctx: Context,
    experiment_ids: Annotated[list[ExperimentIdStr] | None,
                              Field(max_length=limits.MAX_WAIT_IDS, description="Experiments to wait for.")] = None,
    wave_id: OptWaveId = None,
    until: Annotated[Literal["all", "first"], Field(description="'all': return when every one is finished; "
                                                    "'first': as soon as one more finishes.")] = "all",
    timeout_s: Annotated[float, Field(ge=1, le=limits.MAX_WAIT_S,
                                      description="Return after this many seconds even if some are still "
                                      "running (the server caps one call, see the description).")] = 600,
    detail: Annotated[bool, Field(description="Full rows (steps, seed, overrides, GPU type) and `verdicts`: each "
                                  "verdict's noise, threshold, replicates, the reference group's mean and size "
                                  "and every note (default: each row carries its value, verdict, delta and a "
                                  "one-line note).")] = False,
) -> WaitResult:
    """Block until the given experiments (or a wave) finish, or the first one does, or the timeout
    passes; reports progress as each finishes and every few seconds while it blocks. Returns their
    results and verdicts (delta vs the same-GPU-type reference, against the noise floor), so you
    never poll or read raw logs. Use it right after launching. Give experiment_ids or wave_id
    (neither = everything live). One call blocks at most the server's cap (serve --max-wait-s,
    default 50 s, so that clients with a 60 s request timeout never cut it): when it returns with
    experiments still running, call it again exactly as next_step says. When `blocked` is not
    empty those experiments cannot start until its fix is made: do that instead of waiting."""
    eng = engine(ctx)
    cap = fleet(ctx).config.max_wait_s
    timeout = min(float(timeout_s), cap)
    token = anyio.lowlevel.current_token()

    def on_progress(p: Progress) -> None:
        try:
            anyio.from_thread.run(functools.partial(ctx.report_progress, p.done, p.total, p.message), token=token)
        except Exception:  # noqa: BLE001 - a vanished client must not break the wait
            log.debug("progress notification dropped", exc_info=True)

    t0 = time.monotonic()
    res = await anyio.to_thread.run_sync(
        functools.partial(eng.wait, experiment_ids=experiment_ids or None, wave_id=wave_id, until=until,
                          timeout_s=timeout, on_progress=on_progress),
        abandon_on_cancel=True,
    )
    waited = round(time.monotonic() - t0, 1)
    rows = _pick_rows(res.finished, eng.metric)
    shown = {e.id for e in rows}
    omitted = len(res.finished) - len(rows)
    if res.interrupted:
        hint = ("The server is shutting down; experiments keep running and are picked up when it restarts. "
                f"Call {Tool.WAIT_FOR_EXPERIMENTS} again then.")
    elif not res.finished and not res.still_running:
        hint = (f"Nothing to wait for: no experiment is queued or running. "
                f"{Tool.LAUNCH_EXPERIMENT} / {Tool.LAUNCH_WAVE} start some.")
    elif res.still_running:
        again = (f"wave_id='{wave_id}'" if wave_id and not experiment_ids else
                 f"experiment_ids={ids_text(res.still_running, limit=64)}" if len(res.still_running) <= 64 else
                 "no arguments (= every live experiment)")
        why = (f"the server's cap of {cap:g} s per call (serve --max-wait-s) was reached"
               if res.timed_out and timeout < float(timeout_s) else
               f"timeout_s={float(timeout_s):g} passed" if res.timed_out else "one finished (until='first')")
        blocked_ids = {i for b in res.blocked for i in b.experiment_ids}
        if blocked_ids and blocked_ids >= set(res.still_running):
            fixes = " ".join(f"{b.reason} Fix: {b.fix}" for b in res.blocked)
            hint = (f"{len(res.still_running)} cannot start: {fixes} "
                    f"Then call {Tool.WAIT_FOR_EXPERIMENTS} with {again}.")
        else:
            hint = (f"{len(res.still_running)} still live ({why}): call {Tool.WAIT_FOR_EXPERIMENTS} again with "
                    f"{again}." + "".join(f" Blocked: {b.reason} Fix: {b.fix}" for b in res.blocked))
    else:
        hint = (f"All finished: {Tool.KEEP_EXPERIMENT} (or {Tool.PROMOTE}) the best improvement, "
                f"{Tool.DISCARD_EXPERIMENT} the rest, or launch the next wave.")
    if omitted:
        where = f"wave_id='{wave_id}', " if wave_id else ""
        hint += (f" {omitted} more finished are not listed (every failure and the best are): {Tool.LEADERBOARD} ranks "
                 f"them all; {Tool.FETCH_RESULTS}({where}status='done') pages through them.")
    verdicts = [_clip_note(v) for v in res.verdicts if v.experiment_id in shown]
    listed = [ExperimentBrief.of(e, eng.metric) if detail else ExperimentBrief.short(e, eng.metric, result=True)
              for e in rows]
    if wave_id and not detail:   # the wave's description is known: each row says its seed (the overrides its cell)
        wave = eng.get_wave(wave_id)
        listed = [r.model_copy(update={"description": _in_wave(r, wave).description}) for r in listed]
    listed = _with_verdicts(listed, {v.experiment_id: v for v in verdicts}, notes=not detail)
    if detail:   # full rows and verdicts: both within the result's size bound (the rest counted in omitted)
        n = min(fit(listed, limits.RESULT_LIST_CHARS // 2), fit(verdicts, limits.RESULT_LIST_CHARS // 2))
    else:
        n = fit(listed)
    if n < len(listed):
        omitted += len(listed) - n
        hint += (f" {len(listed) - n} rows left out to stay under the result's size bound: "
                 f"{Tool.FETCH_RESULTS}{'(wave_id=' + repr(wave_id) + ')' if wave_id else ''} lists them.")
    listed, verdicts = listed[:n], verdicts[:n]
    gpus = {r.gpu_type for r in listed}
    common = gpus.pop() if len(gpus) == 1 else None
    if common is not None and not detail:
        listed = [r.model_copy(update={"gpu_type": None}) for r in listed]
    return WaitResult(finished=listed, verdicts=verdicts if detail else [], gpu_type=common,
                      metric=eng.metric.describe() if listed else None,
                      finished_count=len(res.finished), omitted=omitted,
                      still_running=res.still_running[:MAX_LISTED], still_running_count=len(res.still_running),
                      timed_out=res.timed_out,
                      interrupted=res.interrupted, waited_s=waited, blocked=res.blocked, next_step=hint)


def _with_verdicts(rows: list[ExperimentBrief], verdicts: dict[str, Verdict], notes: bool) -> list[ExperimentBrief]:
    """Each row with its verdict and delta, and (`notes`) a one-line note on it; a note that
    repeats an earlier row's in this result is left out (replicates share their group's)."""
    seen: set[str] = set()
    out = []
    for r in rows:
        v = verdicts.get(r.id)
        if v is None:
            out.append(r)
            continue
        note = _note(v) if notes else ""
        out.append(r.model_copy(update={"verdict": v.verdict, "delta": v.delta,
                                        "note": None if note in seen else note or None}))
        seen.add(note)
    return out


def _note(v: Verdict) -> str:
    """The verdict's numbers in one line, then its note: what a decision needs without `detail`."""
    if v.verdict in ("improvement", "within_noise", "worse") and v.reference_id:
        head = (f"threshold {general(v.threshold, 2)}, noise {general(v.noise, 2)}; {v.replicates} vs "
                f"{v.reference_replicates} seeds of {v.reference_id}.")
        return f"{head} {v.note}".strip()
    return v.note


def _clip_note(v: Verdict) -> Verdict:
    return v if len(v.note) <= 240 else v.model_copy(update={"note": clip(v.note, 240)})


@tool_errors
def cancel_experiments(
    ctx: Context,
    experiment_ids: Annotated[list[ExperimentIdStr] | None,
                              Field(max_length=limits.MAX_WAIT_IDS, description="Experiments to cancel.")] = None,
    wave_id: Annotated[WaveIdStr | None, Field(description="Cancel every live experiment of this wave.")] = None,
) -> CancelResult:
    """Stop queued or running experiments (they end as 'cancelled', logs kept). Use it to free
    clusters from a wave that is clearly losing or was launched by mistake. Destructive: their
    training is lost. Finished experiments are not touched."""
    eng = engine(ctx)
    if bool(experiment_ids) == bool(wave_id):
        raise ToolError(f"{Tool.CANCEL_EXPERIMENTS} needs exactly one of experiment_ids=['e0001', ...] or "
                        "wave_id='w0001'. Nothing was cancelled.")
    done = eng.cancel_wave(wave_id) if wave_id else eng.cancel(list(experiment_ids or []))
    rows = [ExperimentBrief.short(e, engine(ctx).metric) for e in done[:MAX_LISTED]]
    return CancelResult(cancelled=rows[:fit(rows)],
                        cancelled_count=sum(e.status == Status.cancelled for e in done),
                        next_step=f"Their clusters are free for the next launch; "
                        f"{Tool.FETCH_RESULTS}(status='cancelled') lists them.")


class _ActHints(TypedDict):
    read_only_hint: bool
    open_world_hint: bool


ACT = _ActHints(read_only_hint=False, open_world_hint=False)


def register(server: MCPServer) -> None:
    server.add_tool(launch_experiment, name=Tool.LAUNCH_EXPERIMENT, title="Launch an experiment",
                    annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=False, **ACT))
    server.add_tool(launch_wave, name=Tool.LAUNCH_WAVE, title="Launch a factorial wave",
                    annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=False, **ACT))
    server.add_tool(promote, name=Tool.PROMOTE, title="Promote to another GPU tier",
                    annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=False, **ACT))
    server.add_tool(wait_for_experiments, name=Tool.WAIT_FOR_EXPERIMENTS, title="Wait for experiments",
                    annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False))
    server.add_tool(cancel_experiments, name=Tool.CANCEL_EXPERIMENTS, title="Cancel experiments",
                    annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=True, **ACT))
