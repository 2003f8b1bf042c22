"""The experiment engine: the one object the MCP tools call (`Engine`, in `facade.py`), and its
parts, one concern each. Knows nothing about MCP."""

from mcp_server.engine.facade import Engine, WaitResult

__all__ = ["Engine", "WaitResult"]
