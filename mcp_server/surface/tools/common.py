"""What every tool module shares: the engine lookup, error mapping, bounded argument types and
the compact experiment view the tools return."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast, overload

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from mcp_server.domain import ids, limits
from mcp_server.domain.errors import FleetError, LimitExceeded, NotFound
from mcp_server.domain.metric import DEFAULT_METRIC, Metric
from mcp_server.domain.models import Decision, Experiment, Status
from mcp_server.domain.tool_names import Tool
from mcp_server.surface.tools import lean

if TYPE_CHECKING:  # pragma: no cover
    from mcp_server.domain.config import FleetConfig
    from mcp_server.engine.facade import Engine

log = logging.getLogger("autoresearch_fleet.tools")

MAX_BRIEF_VALUE = 200        # characters of one override value in a compact row


@dataclass
class FleetContext:
    """What the server's lifespan yields: the one engine every tool calls."""

    engine: Engine
    config: FleetConfig


def fleet(ctx: Context) -> FleetContext:
    # The tools take a bare `Context` (the SDK finds the context parameter by that class), whose
    # lifespan type defaults to dict; FleetServer is MCPServer[FleetContext], so this is the FleetContext.
    return cast(FleetContext, ctx.request_context.lifespan_context)


def engine(ctx: Context) -> Engine:
    return fleet(ctx).engine


# -- error mapping -----------------------------------------------------------------------------

# (error kind, word in the text, the hint): the first match is appended when the engine's text
# names no tool call yet (its texts usually do).
_HINTS: list[tuple[type[FleetError], str, str]] = [
    (NotFound, "cluster", f"Call {Tool.LIST_CLUSTERS} to see the cluster names."),
    (NotFound, "wave", f"Call {Tool.FETCH_RESULTS} to see the experiments and their wave ids."),
    (NotFound, "experiment", f"Call {Tool.FETCH_RESULTS} to see the experiment ids."),
    (LimitExceeded, "", f"Call {Tool.BUDGET_STATUS} to see the limits and what is in use."),
    (FleetError, "no file", "Write the file into the workspace first (path relative to it), or omit source "
     "to run train.py."),
]
_TOOL_NAME = re.compile(r"\b(" + "|".join(t.value for t in Tool) + r")\b")


def to_tool_error(exc: FleetError) -> ToolError:
    """The engine's text is already written for the model; add the next call where it names none."""
    text = str(exc).strip() or type(exc).__name__
    if not _TOOL_NAME.search(text):
        for kind, word, hint in _HINTS:
            if isinstance(exc, kind) and word in text.lower():
                text = f"{text} {hint}"
                break
    return ToolError(text)


def _unexpected(tool: str, exc: Exception) -> ToolError:
    log.exception("tool %s failed unexpectedly", tool)
    detail = f"{type(exc).__name__}: {exc}"[:300]
    return ToolError(
        f"{tool} failed inside the server ({detail}). Nothing was decided on your behalf; "
        f"the traceback is in the server's stderr log. Call {Tool.LIST_CLUSTERS} or {Tool.FETCH_RESULTS} to check "
        "the state, then retry once."
    )


F = TypeVar("F", bound=Callable[..., Any])


def _out(value: Any) -> Any:
    """A BaseModel result goes out lean (`lean`: compact, empty optional fields left out)."""
    return lean.result(value) if isinstance(value, BaseModel) else value


def tool_errors(fn: F) -> F:
    """Turn engine errors into ToolErrors with the same text; log anything unexpected to stderr;
    send a BaseModel result lean (`lean`)."""
    name = fn.__name__

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return _out(await fn(*args, **kwargs))
            except ToolError:
                raise
            except FleetError as exc:
                raise to_tool_error(exc) from exc
            except Exception as exc:  # noqa: BLE001 - reported to the model, logged with traceback
                raise _unexpected(name, exc) from exc

        return awrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return _out(fn(*args, **kwargs))
        except ToolError:
            raise
        except FleetError as exc:
            raise to_tool_error(exc) from exc
        except Exception as exc:  # noqa: BLE001
            raise _unexpected(name, exc) from exc

    return wrapper  # type: ignore[return-value]


#: the annotations of every read-only tool
READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)


# -- bounded argument types --------------------------------------------------------------------
# Constraint-only types, then the parameter types with their description at the top level (so an
# optional parameter's description is not buried inside an anyOf arm).

ExperimentIdStr = Annotated[str, Field(pattern=ids.EXPERIMENT_ID, max_length=ids.ID_MAX_CHARS)]
WaveIdStr = Annotated[str, Field(pattern=ids.WAVE_ID, max_length=ids.ID_MAX_CHARS)]
GpuTypeStr = Annotated[str, Field(pattern=ids.GPU_TYPE, max_length=ids.GPU_TYPE_MAX_CHARS)]
BaseRefStr = Annotated[str, Field(pattern=ids.BASE_REF, max_length=ids.BASE_REF_MAX_CHARS)]
ClusterName = Annotated[str, Field(pattern=ids.CLUSTER_NAME, max_length=ids.CLUSTER_NAME_MAX_CHARS)]
OverrideName = Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]{0,63}$", max_length=64)]
Scalar = (bool | Annotated[int, Field(ge=-(2**53), le=2**53)] | float
          | Annotated[str, Field(max_length=limits.MAX_VALUE_REPR)] | None)
# Lists and dicts nest (the engine checks depth and size); the schema stays readable.
OverrideValue = (Scalar | Annotated[list[Any], Field(max_length=limits.MAX_VALUE_ITEMS)]
                 | Annotated[dict[str, Any], Field(max_length=limits.MAX_VALUE_ITEMS)])

GPU_DESC = ("GPU type / tier, e.g. 'H100', 'H200', 'A10G', or 'CPU' for local CPU slots; "
            f"{Tool.GET_GPU_INFO} lists the types in the fleet.")
ExperimentId = Annotated[ExperimentIdStr, Field(description="Experiment id, e.g. 'e0042'.")]
ExperimentIds = list[ExperimentIdStr]
WaveId = Annotated[WaveIdStr, Field(description="Wave id, e.g. 'w0003'.")]
OptWaveId = Annotated[WaveIdStr | None, Field(description="Wave id, e.g. 'w0003'.")]
GpuType = Annotated[GpuTypeStr, Field(description=GPU_DESC)]
OptGpuType = Annotated[GpuTypeStr | None, Field(description=GPU_DESC + " Default: any free cluster.")]
OptBaseRef = Annotated[
    BaseRefStr | None,
    Field(description="Derive from this experiment's code (id, e.g. 'e0007') or a git commit sha. "
          "Default: the session branch head with the current working train.py."),
]
Description = Annotated[
    str,
    Field(min_length=1, max_length=limits.MAX_DESCRIPTION,
          description="One line saying what this changes and why, "
                      "e.g. 'MATRIX_LR 0.04 -> 0.06: faster early descent'."),
]
OptHypothesis = Annotated[
    str | None,
    Field(max_length=limits.MAX_REASON, description="One line: what this launch tests and what you expect, "
          f"e.g. 'a higher LR helps at depth 8'. Kept in the ledger ({Tool.GET_EXPERIMENT}, {Tool.SESSION_DIGEST}, "
          "results.tsv)."),
]
OptReason = Annotated[
    str | None,
    Field(max_length=limits.MAX_REASON, description="One line: why you decided this, e.g. 'beyond noise on H100, "
          f"3 seeds'. Kept in the ledger ({Tool.GET_EXPERIMENT}, {Tool.SESSION_DIGEST}, results.tsv)."),
]
OptOverrides = Annotated[
    dict[OverrideName, OverrideValue] | None,
    Field(max_length=limits.MAX_OVERRIDES,
          description="Module-level UPPER_CASE constants of train.py to set for this run, as Python literals "
          "written through the AST, e.g. {\"MATRIX_LR\": 0.05, \"DEPTH\": 6}. Names must exist in train.py."),
]


# -- compact results ---------------------------------------------------------------------------


class ExperimentBrief(BaseModel):
    """One experiment in a few fields: what it is, where it ran, what it scored."""

    id: str
    description: str
    status: str = Field(
        description="queued | running | done | crash | nan | oom | timeout | rejected | cancelled | lost")
    waiting_for_slot: bool = Field(False, description="Running, but queued ahead on its slot behind another job: "
                                   "not started yet.")
    wave_id: str | None = None
    decision: str | None = Field(None, description="keep | discard once you decided.")
    gpu_type: str | None = Field(None, description="GPU type it ran on (or was requested for, while queued).")
    val_bpb: float | None = Field(None, description="Lower is better. Compare only within one GPU type.")
    value: float | None = Field(None, description=f"Its value of the task's metric (the {Tool.LEADERBOARD}'s "
                                "`metric` names it and its direction; the built-in task's is val_bpb).")
    num_steps: int | None = None
    seed: int = 0
    overrides: dict[str, Any] = Field(default_factory=dict, description="Constants changed vs its base code; "
                                      "{} = unchanged (a control/baseline).")
    error: str | None = Field(None, description=f"Short failure reason; {Tool.GET_EXPERIMENT} shows the log.")
    verdict: str | None = Field(None, description=f"{Tool.WAIT_FOR_EXPERIMENTS} only: its verdict vs the same-GPU-type "
                                "reference (improvement | within_noise | worse | reference | no_reference | failed).")
    delta: float | None = Field(None, description=f"{Tool.WAIT_FOR_EXPERIMENTS} only: mean of its group - mean of the "
                                "reference group (negative = better when lower is better).")
    note: str | None = Field(None, description=f"{Tool.WAIT_FOR_EXPERIMENTS} only: one line on the verdict: threshold, "
                             "noise, seeds vs the reference's, and what is missing (left out when it repeats an "
                             "earlier row's).")

    @classmethod
    def of(cls, e: Experiment, metric: Metric = DEFAULT_METRIC) -> ExperimentBrief:
        return cls(
            id=e.id,
            description=clip(e.description, 160),
            status=Status(e.status).value,
            waiting_for_slot=e.waiting_for_slot,
            wave_id=e.wave_id,
            decision=None if e.decision is None else Decision(e.decision).value,
            gpu_type=e.ran_on_gpu or e.gpu_type,
            val_bpb=e.metrics.val_bpb,
            value=metric.raw(e),
            num_steps=e.metrics.num_steps,
            seed=e.seed,
            overrides=brief_overrides(e.overrides),
            error=clip(e.error, 300),
        )

    @classmethod
    def short(cls, e: Experiment, metric: Metric = DEFAULT_METRIC, result: bool = False) -> ExperimentBrief:
        """The fields a launch or a wait needs: id, what it is (description, overrides), status,
        GPU type, decision and failure reason; with `result` its metric's value too (not the steps,
        nor the seed: the description names it)."""
        description = clip(e.description, 160)
        return cls(id=e.id, description=description, status=Status(e.status).value,
                   waiting_for_slot=e.waiting_for_slot,
                   decision=None if e.decision is None else Decision(e.decision).value,
                   gpu_type=e.ran_on_gpu or e.gpu_type, value=metric.raw(e) if result else None,
                   overrides=brief_overrides(e.overrides),
                   error=clip(e.error, 300))


def brief_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides, a value longer than MAX_BRIEF_VALUE characters said by its size instead."""
    out = {}
    for k, v in overrides.items():
        n = len(repr(v))
        out[k] = v if n <= MAX_BRIEF_VALUE else f"<a {type(v).__name__} of {n} characters: {Tool.GET_EXPERIMENT}>"
    return out


def chars(obj: Any) -> int:
    """Characters of `obj` as a tool result's text (lean compact JSON)."""
    return len(json.dumps(lean.lean(obj), separators=(",", ":"), ensure_ascii=False))


def fit(items: list[Any], budget: int = limits.RESULT_LIST_CHARS) -> int:
    """How many leading `items` fit in `budget` characters of a result (at least one, when any)."""
    used = 0
    for n, item in enumerate(items):
        used += chars(item) + 1
        if used > budget:
            return max(n, 1)
    return len(items)


@overload
def clip(text: str, n: int) -> str: ...


@overload
def clip(text: None, n: int) -> None: ...


def clip(text: str | None, n: int) -> str | None:
    if text is None or len(text) <= n:
        return text
    return text[: n - 3] + "..."


def ids_text(ids: list[str], limit: int = 12) -> str:
    """A short python-ish list for next-step hints."""
    shown = ", ".join(f"'{i}'" for i in ids[:limit])
    return f"[{shown}{', ...' if len(ids) > limit else ''}]"
