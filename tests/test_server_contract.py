"""The tool contract: every tool's name, title, description, input schema, output schema and
annotations, compared with the checked-in snapshot tests/snapshots/tools.json, so that any change
to what the model sees shows up in review.

After an intended change: UPDATE_SNAPSHOTS=1 pytest tests/test_server_contract.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_server.domain.config import FleetConfig
from mcp_server.surface.server import build_server

SNAPSHOT = Path(__file__).parent / "snapshots" / "tools.json"

# The names are a contract (DESIGN.md): skills and tests call them.
READ_ONLY = {"get_gpu_info", "list_clusters", "get_experiment", "fetch_results", "leaderboard",
             "budget_status", "plot_progress", "analyze_wave", "session_digest"}
ACTING = {"provision_clusters", "teardown_clusters", "launch_experiment", "launch_wave", "promote",
          "wait_for_experiments", "cancel_experiments", "keep_experiment", "discard_experiment"}
DESTRUCTIVE = {"teardown_clusters", "cancel_experiments", "keep_experiment"}


def _tools() -> list[dict[str, Any]]:
    server = build_server(FleetConfig(workspace=Path("/nonexistent/never-started")))
    tools = anyio.run(server.list_tools)
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]


def _snapshot_view(tools: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("title", "description", "inputSchema", "outputSchema", "annotations")
    return {t["name"]: {k: t.get(k) for k in keys} for t in sorted(tools, key=lambda t: t["name"])}


@pytest.fixture(scope="module")
def tools() -> list[dict[str, Any]]:
    return _tools()


def test_tools_match_snapshot(tools):
    current = _snapshot_view(tools)
    if os.environ.get("UPDATE_SNAPSHOTS") == "1" or not SNAPSHOT.exists():
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    changed = sorted(n for n in set(current) | set(expected) if current.get(n) != expected.get(n))
    assert not changed, (
        f"tool contract changed for {changed}; if intended, run UPDATE_SNAPSHOTS=1 pytest "
        f"tests/test_server_contract.py and review the diff of {SNAPSHOT.name}"
    )


def test_tool_names_are_the_design_contract(tools):
    assert {t["name"] for t in tools} == READ_ONLY | ACTING


def test_every_tool_has_title_docstring_and_honest_annotations(tools):
    for t in tools:
        name, ann = t["name"], t.get("annotations", {})
        assert t.get("title"), name
        assert len(t.get("description", "")) > 80 and "Use" in t["description"], f"{name}: say when to use it"
        assert "readOnlyHint" in ann and "openWorldHint" in ann and "idempotentHint" in ann, name
        if name in READ_ONLY:
            assert ann["readOnlyHint"] is True, name
        else:
            assert "destructiveHint" in ann or ann["readOnlyHint"], name
        if name in DESTRUCTIVE:
            assert ann["readOnlyHint"] is False and ann["destructiveHint"] is True, name
        if name in {"launch_experiment", "launch_wave", "promote", "provision_clusters"}:
            assert ann["readOnlyHint"] is False and ann["destructiveHint"] is False and ann["idempotentHint"] is False


def _walk(schema: Any, path: str, problems: list[str]) -> None:
    if isinstance(schema, dict):
        typ = schema.get("type")
        if typ == "string" and not ({"maxLength", "enum", "const"} & schema.keys()):
            problems.append(f"{path}: unbounded string")
        if typ == "integer" and not ({"maximum", "enum"} & schema.keys()):
            problems.append(f"{path}: unbounded integer")
        if typ == "array" and "maxItems" not in schema:
            problems.append(f"{path}: unbounded array")
        if typ == "object" and path.count("/") > 1 and "maxProperties" not in schema:
            problems.append(f"{path}: unbounded object")
        for k, v in schema.items():
            _walk(v, f"{path}/{k}", problems)
    elif isinstance(schema, list):
        for i, v in enumerate(schema):
            _walk(v, f"{path}[{i}]", problems)


def test_inputs_are_bounded_and_described(tools):
    problems: list[str] = []
    for t in tools:
        schema = t["inputSchema"]
        for prop, sub in schema.get("properties", {}).items():
            if not sub.get("description"):
                problems.append(f"{t['name']}.{prop}: no description")
            _walk(sub, f"{t['name']}.{prop}", problems)
    assert not problems, "\n".join(problems)


def test_structured_output_everywhere_but_the_image(tools):
    for t in tools:
        if t["name"] == "plot_progress":
            assert "outputSchema" not in t
        else:
            assert t.get("outputSchema", {}).get("type") == "object", t["name"]
            assert "next_step" in t["outputSchema"].get("properties", {}) or t["name"] in {
                "get_gpu_info", "budget_status"}, f"{t['name']}: results say what to call next"
