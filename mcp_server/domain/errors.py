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


class TeardownIncomplete(FleetError):
    """Some clusters could not be taken down: they still exist (and may cost money) and their
    experiments keep running. Unlike other FleetErrors this one can follow partial work:
    `removed` names the clusters that WERE taken down (empty when none was)."""

    def __init__(self, message: str, removed: list[str] | None = None) -> None:
        super().__init__(message)
        self.removed = list(removed or [])
