"""A stuck state, said honestly: why some live experiments cannot progress and what fixes it.
The wait result and budget_status carry them (computed in `waiting.WaitingMixin._blockers`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Blocker(BaseModel):
    """Why some live experiments cannot progress, and what fixes it."""

    reason: str = Field(description="What stops them, in one sentence.")
    experiment_ids: list[str] = Field(description="The experiments it holds back (queued).")
    fix: str = Field(description="The call or change that unblocks them.")
