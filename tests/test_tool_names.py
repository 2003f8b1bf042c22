"""Tool names have one home (`domain/tool_names.Tool`): the server registers exactly those, and
every tool-like name in a text of the package (an error, a hint, a next step), the skills and the
Claude Code settings is one of them. A renamed or misspelt tool fails here."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import anyio
import pytest

from mcp_server.domain.config import FleetConfig
from mcp_server.domain.tool_names import Tool
from mcp_server.surface.server import build_server

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "mcp_server"
TOOLS = {t.value for t in Tool}
# Every tool starts with one of these verbs; a snake_case word starting with one that is not a
# tool is a stale or misspelt tool name (or must be listed here as not being one).
VERBS = ("get", "list", "fetch", "budget", "plot", "provision", "teardown", "launch", "promote", "wait", "cancel",
         "keep", "discard", "analyze", "session", "leaderboard")
TOOL_LIKE = re.compile(rf"\b((?:{'|'.join(VERBS)})_[a-z_]+)\b")
NOT_TOOLS = {
    "get_many", "list_constants", "list_tools", "get_wave", "get_meta", "launch_wave_args", "wait_s", "keep_alive",
    "get_experiment_log", "list_experiments", "fetch_failed", "budget_s", "launch_s",
}


def _package_texts() -> list[tuple[str, int, str]]:
    """(file, line, text) of every string constant in the package that is not a docstring."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.value) for n in ast.walk(tree)
                      if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                out.append((str(path.relative_to(REPO)), node.lineno, node.value))
    return out


def test_the_server_registers_exactly_the_enum():
    server = build_server(FleetConfig(workspace=Path("/nonexistent")))
    names = {t.name for t in anyio.run(server.list_tools)}
    assert names == TOOLS


def test_every_tool_named_in_a_text_of_the_package_exists():
    bad = [(f, line, word) for f, line, text in _package_texts() for word in TOOL_LIKE.findall(text)
           if word not in TOOLS and word not in NOT_TOOLS]
    assert bad == [], f"tool-like names that are no tool: {bad}"


def test_error_texts_name_tools_through_the_enum():
    """Outside domain/tool_names.py, a tool name spelt in a plain string literal is a second home:
    texts use f'{Tool.X}'."""
    spelt = [(f, line, text[:80]) for f, line, text in _package_texts()
             if not f.endswith("tool_names.py") and re.search(rf"\b({'|'.join(TOOLS)})\b", text)]
    assert spelt == [], f"tool names spelt out instead of Tool.X: {spelt}"


@pytest.mark.parametrize("doc", sorted([*(REPO / "skills").rglob("*.md"), REPO / "program.md",
                                         *(REPO / "agents").glob("*.md")]), ids=lambda p: p.name)
def test_every_tool_named_in_the_skills_exists(doc):
    words = set(TOOL_LIKE.findall(doc.read_text(encoding="utf-8")))
    assert words - TOOLS - NOT_TOOLS == set()


def test_claude_code_permissions_name_existing_tools():
    settings = json.loads((REPO / ".claude" / "settings.json").read_text())
    named = set(re.findall(r"mcp__autoresearch__(\w+)", json.dumps(settings)))
    assert named and named <= TOOLS
