"""The MCP server: builds the Engine from a FleetConfig for the server's lifetime and exposes it
as the tools in `mcp_server/tools/`. Transport-agnostic; `cli.py` picks stdio or HTTP."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, Icon, TextContent, ToolAnnotations
from pydantic import ValidationError

from mcp_server.domain.config import FleetConfig
from mcp_server.domain.errors import FleetError
from mcp_server.domain.metric import DEFAULT_METRIC, Metric
from mcp_server.domain.task import load_task
from mcp_server.domain.tool_names import Tool
from mcp_server.surface.tools import register_all
from mcp_server.surface.tools.common import FleetContext

log = logging.getLogger("autoresearch_fleet.server")

SERVER_NAME = "autoresearch"

INSTRUCTIONS = f"""\
Parallel ML research fleet. You edit the workspace's train.py; the server runs variants of it for a
fixed wall-clock budget on many clusters at once and records every val_bpb (lower is better) in a
ledger. Typical loop: {Tool.GET_GPU_INFO} / {Tool.LIST_CLUSTERS} ({Tool.PROVISION_CLUSTERS} if none) -> baseline with
{Tool.LAUNCH_EXPERIMENT}(replicates=3) -> {Tool.LAUNCH_WAVE} (factorial: 2-3 knobs x 2-4 levels) ->
{Tool.WAIT_FOR_EXPERIMENTS} (blocks up to the server's per-call cap with progress; call it again as its
next_step says until all finished; verdicts vs the noise floor) -> {Tool.PROMOTE} the top 2-3 screening wins to
the fast GPU tier with replicates -> {Tool.KEEP_EXPERIMENT} the one confirmed there beyond the noise,
{Tool.DISCARD_EXPERIMENT} the rest. Results are comparable only within one GPU type. {Tool.TEARDOWN_CLUSTERS}
when done."""


def _describe_validation(tool: str, exc: ValidationError, schema: dict[str, Any] | None) -> str:
    props = (schema or {}).get("properties", {})
    lines = []
    for err in exc.errors()[:8]:
        loc = [str(p) for p in err.get("loc", ())]
        field = loc[0] if loc else "?"
        where = ".".join(loc) or "arguments"
        line = f"- {where}: {err.get('msg', 'invalid')}"
        desc = props.get(field, {}).get("description")
        if desc:
            line += f" ({field}: {desc})"
        lines.append(line)
    return (f"Invalid arguments for {tool}:\n" + "\n".join(lines)
            + f"\nNothing was changed. Fix these and call {tool} again.")


def for_metric(text: str, metric: Metric) -> str:
    """A text written for the built-in task's val_bpb (lower is better), said of the task's metric."""
    if metric == DEFAULT_METRIC:
        return text
    text = text.replace("val_bpb (lower is better)", metric.describe())
    text = text.replace("lower is better", f"{metric.direction} is better")
    return text.replace("val_bpb", metric.name)


_TEMPLATE_KEY = "val_bpb"


def keys_for_metric(data: Any, metric: Metric) -> Any:
    """Result data written for the built-in task, with its field names said of the task's metric:
    `val_bpb`, `mean_val_bpb`, `reference_val_bpb`, ... become `val_accuracy`, `mean_val_accuracy`,
    ... (a name that would shadow another field of the same object stays as it is)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            new = k.replace(_TEMPLATE_KEY, metric.name) if isinstance(k, str) and _TEMPLATE_KEY in k else k
            out[new if new not in data else k] = keys_for_metric(v, metric)
        return out
    if isinstance(data, list):
        return [keys_for_metric(v, metric) for v in data]
    return data


def schema_for_metric(schema: Any, metric: Metric) -> Any:
    """An output schema with the same renaming as `keys_for_metric` (properties, required) and its
    descriptions said of the task's metric."""
    if isinstance(schema, dict):
        out: dict[str, Any] = {}
        for k, v in schema.items():
            if k == "properties" and isinstance(v, dict):
                renamed = {(n.replace(_TEMPLATE_KEY, metric.name) if _TEMPLATE_KEY in n
                            and n.replace(_TEMPLATE_KEY, metric.name) not in v else n): sub for n, sub in v.items()}
                out[k] = {name: schema_for_metric(sub, metric) for name, sub in renamed.items()}
                continue
            if k == "required" and isinstance(v, list):
                props = schema.get("properties", {})
                out[k] = [n.replace(_TEMPLATE_KEY, metric.name) if _TEMPLATE_KEY in n and
                          n.replace(_TEMPLATE_KEY, metric.name) not in props else n for n in v]
                continue
            out[k] = for_metric(v, metric) if k == "description" and isinstance(v, str) else \
                schema_for_metric(v, metric)
        return out
    if isinstance(schema, list):
        return [schema_for_metric(v, metric) for v in schema]
    return schema


class FleetServer(MCPServer[FleetContext]):
    """MCPServer whose argument errors tell the model what to fix: unknown tools list the valid
    ones, unknown argument names list the valid ones, and validation errors quote the field's
    description. Nothing reaches a tool function until its arguments are valid. Tool descriptions
    name the task's metric (`metric`: the workspace's, read when the server is built)."""

    metric: Metric = DEFAULT_METRIC

    def add_tool(self, fn: Callable[..., Any], name: str | None = None, title: str | None = None,
                 description: str | None = None, annotations: ToolAnnotations | None = None,
                 icons: list[Icon] | None = None, meta: dict[str, Any] | None = None,
                 structured_output: bool | None = None) -> None:
        if self.metric != DEFAULT_METRIC:     # (the built-in task's descriptions stay exactly the SDK's)
            text = description or inspect.getdoc(fn) or ""
            description = for_metric(text, self.metric) if text else None
        super().add_tool(fn, name=name, title=title, description=description,
                         annotations=annotations, icons=icons, meta=meta, structured_output=structured_output)

    #: the running engine (set by the lifespan while it runs): the HTTP dashboard reads through it
    engine: Any = None

    async def list_tools(self) -> list[Any]:
        tools = await super().list_tools()
        if self.metric == DEFAULT_METRIC:
            return tools
        # a task with another metric: result fields are named after it (see call_tool), so are the
        # output schemas' properties, and every schema's descriptions say it
        return [t.model_copy(update={"output_schema": schema_for_metric(t.output_schema, self.metric),
                                     "input_schema": schema_for_metric(t.input_schema, self.metric)})
                for t in tools]

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        schema = self._tool_input_schema(name)
        if schema is None:
            valid = ", ".join(sorted(t.name for t in await self.list_tools()))
            raise ToolError(f"Unknown tool {name[:64]!r}. Valid tools: {valid}.")
        known = set(schema.get("properties", {}))
        unknown = sorted(k for k in arguments if k not in known)
        if unknown:
            shown = ", ".join(repr(k[:64]) for k in unknown[:8])
            raise ToolError(
                f"Unknown argument(s) {shown} for {name}. Valid arguments: {', '.join(sorted(known)) or 'none'}. "
                f"Nothing was changed. Call {name} again with only those."
            )
        try:
            result = await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(_describe_validation(name, exc.__cause__, schema)) from exc.__cause__
            raise
        if (self.metric != DEFAULT_METRIC and isinstance(result, CallToolResult)
                and result.structured_content is not None and not result.is_error):
            result.structured_content = keys_for_metric(result.structured_content, self.metric)
        return _compact_text(result)


def _compact_text(result: Any) -> Any:
    """The SDK's text copy of structured content is indented JSON; the same JSON without the
    indentation is a third of the tokens for the model."""
    if isinstance(result, CallToolResult) and result.structured_content is not None and not result.is_error:
        text = json.dumps(result.structured_content, separators=(",", ":"), ensure_ascii=False)
        result.content = [TextContent(type="text", text=text)]
    return result


EngineFactory = Callable[[FleetConfig], Any]


def _default_engine(config: FleetConfig) -> Any:
    from mcp_server.engine.facade import Engine

    return Engine(config)


def build_server(config: FleetConfig, engine_factory: EngineFactory = _default_engine) -> FleetServer:
    """The server for one research session. The engine is built and started when the server starts
    (lifespan) and closed when it stops; running experiments survive a restart."""

    @asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[FleetContext]:
        log.info("starting engine: workspace=%s backend=%s tag=%s", config.workspace, config.backend, config.tag)
        engine = await anyio.to_thread.run_sync(engine_factory, config)
        try:
            await anyio.to_thread.run_sync(engine.start)
        except BaseException as exc:
            if isinstance(exc, FleetError):
                log.error("engine cannot start: %s", exc)
            else:
                log.exception("engine failed to start")
            await anyio.to_thread.run_sync(engine.close)
            raise
        log.info("engine started")
        server.engine = engine          # the HTTP transport's dashboard reads through it
        try:
            yield FleetContext(engine=engine, config=config)
        finally:
            server.engine = None
            log.info("closing engine")
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(engine.close)

    metric = load_task(Path(config.workspace).expanduser()).metric   # (a bad description: refused here)
    server = FleetServer(SERVER_NAME, title="autoresearch fleet", instructions=for_metric(INSTRUCTIONS, metric),
                         version=_version(), lifespan=lifespan)
    server.metric = metric
    register_all(server)
    return server


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("autoresearch-fleet")
    except Exception:  # noqa: BLE001
        return "0.0.0"
