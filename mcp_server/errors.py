"""Errors the engine raises. Their text is written for the model: what was wrong, the valid
values, and the next call to make. The MCP layer turns every FleetError into a ToolError."""


class FleetError(Exception):
    """Base class: an error the caller can act on. Raising one must leave no change behind."""


class InvalidInput(FleetError):
    """An argument is malformed, unknown, or out of range."""


class NotFound(FleetError):
    """An id (experiment, wave, cluster) does not exist."""


class LimitExceeded(FleetError):
    """The call would exceed a limit the server enforces (clusters, concurrency, GPU-hours)."""


class Conflict(FleetError):
    """The call does not fit the current state (e.g. keeping an experiment that crashed)."""
