"""What a tool result costs the agent: every result lands in its context window, so results go
out lean -- compact JSON (no indentation), optional fields left out while they are empty (None,
False, "", [] or {}, or 0 where 0 is the default), and floats to 6 significant digits (val_bpb
needs no more), small ones (|x| < 0.1: deltas, noise floors, std) to 4, large ones (seconds,
timestamps) to 3 decimals (`domain/numbers.lean`).

The structured content and the text copy are the same lean JSON (a client may show either), and
the structured content still validates against the tool's output schema: only fields that have
a default are left out, and a left-out field means its default (an empty `blocked`, no `error`,
not `waiting_for_slot`). Required fields are always present, even when null.

Rules: pure; called on every BaseModel a tool returns (`common.tool_errors`)."""

from __future__ import annotations

import json
from typing import Any

from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from mcp_server.domain import numbers


def lean(obj: Any) -> Any:
    """`obj` as JSON-able data, lean (see the module)."""
    if isinstance(obj, BaseModel):
        out: dict[str, Any] = {}
        for name, field in type(obj).model_fields.items():
            value = getattr(obj, name)
            if not field.is_required() and (_empty(value) or (value == 0 and field.default == 0
                                                              and type(value) is int)):
                continue
            out[field.alias or name] = lean(value)
        return out
    if isinstance(obj, dict):
        return {str(k): lean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [lean(v) for v in obj]
    if isinstance(obj, float):
        return numbers.lean(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return lean(to_jsonable_python(obj, fallback=str))


def _empty(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (str, list, tuple, dict)) and not value)


def result(model: BaseModel) -> CallToolResult:
    """A tool's BaseModel result as the MCP result: the lean structured content and its compact text."""
    data = lean(model)
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(data, separators=(",", ":"),
                                                                           ensure_ascii=False))],
                          structured_content=data)
