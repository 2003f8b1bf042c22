"""The retry policy for attempts lost to the infrastructure (a slot, process or cluster vanished).

Pure rules, no I/O: the ledger applies them when it records a lost attempt. Code failures (crash,
timeout) are never retried; only `lost` attempts are, up to `max_attempts` attempts in all.
"""

from __future__ import annotations

from mcp_server.domain.models import Status


def next_status_after_loss(attempt: int, max_attempts: int) -> Status:
    """The status of an experiment whose attempt number `attempt` (1-based) was lost: queued
    again while it has attempts left (`attempt < max_attempts`), else finally `lost`."""
    return Status.queued if attempt < max_attempts else Status.lost


__all__ = ["next_status_after_loss"]
