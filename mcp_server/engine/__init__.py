"""The experiment engine: the one object the MCP tools call (`Engine`, in `facade.py`), and its
parts, one concern each. Knows nothing about MCP."""

from mcp_server.engine.facade import DecisionOutcome, Engine, Progress, WaitResult

__all__ = ["DecisionOutcome", "Engine", "Progress", "WaitResult"]
