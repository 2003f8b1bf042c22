"""The MCP tool surface, one module per concern. Each module's `register(server)` adds its tools."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from mcp_server.surface.tools import clusters, decisions, experiments, research, results

MODULES = (clusters, experiments, results, decisions, research)


def register_all(server: MCPServer) -> None:
    """Register every tool, each under its `Tool` name (tests/test_tool_names.py: all of them)."""
    for module in MODULES:
        module.register(server)
