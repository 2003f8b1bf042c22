"""Input validation for the engine: the limits it enforces and the checks every public method
runs BEFORE it writes anything.

A bad value raises a `FleetError` subclass whose text names the problem, the valid values and
the next call to make. Plain functions check one value; `Checks` answers the questions that need
the engine's state (does this experiment / wave exist, is there a slot of this GPU type, is there
room for n more live experiments)."""

from __future__ import annotations

import re
from typing import Any

from mcp_server.domain import gpus
from mcp_server.domain.config import FleetConfig
from mcp_server.domain.errors import InvalidInput, LimitExceeded, NotFound
from mcp_server.domain.ids import EXPERIMENT_ID_RE as EXP_ID
from mcp_server.domain.ids import WAVE_ID_RE as WAVE_ID
from mcp_server.domain.ids import format_exp_id, format_wave_id
from mcp_server.domain.limits import (
    MAX_DESCRIPTION,
    MAX_IDS,
    MAX_QUEUED,
    MAX_REASON,
)
from mcp_server.domain.models import Experiment, Wave
from mcp_server.domain.tool_names import Tool
from mcp_server.scheduling.scheduler import Scheduler
from mcp_server.store.ledger import Ledger

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def short(value: Any, n: int = 60) -> str:
    """`repr(value)`, cut to n characters: for quoting a bad value in an error."""
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer from {lo} to {hi}, got {short(value)}.")
    if not lo <= value <= hi:
        raise InvalidInput(f"{name} must be from {lo} to {hi}, got {value}.")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false, got {short(value)}.")
    return value


def check_description(description: Any) -> str:
    """One line of plain text (whitespace collapsed), at most MAX_DESCRIPTION characters."""
    if not isinstance(description, str) or not description.strip():
        raise InvalidInput("description must be a non-empty text saying what the experiment tests, "
                           "e.g. 'depth 10 instead of 8'.")
    text = " ".join(description.split())
    if len(text) > MAX_DESCRIPTION:
        raise InvalidInput(f"description is {len(text)} characters; at most {MAX_DESCRIPTION}. Say what changed "
                           "in one line; details belong in train.py comments.")
    if _CONTROL_CHARS.search(text):
        raise InvalidInput("description contains control characters; use plain text.")
    return text


def check_reason(value: Any, name: str) -> str | None:
    """An optional one-line text (hypothesis, reason): None or at most MAX_REASON characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be one line of text (or omitted), got {short(value)}.")
    if "\n" in value.strip() or "\r" in value.strip():
        raise InvalidInput(f"{name} must be one line; put the details in the description or train.py comments.")
    text = " ".join(value.split())
    if not text:
        return None
    if len(text) > MAX_REASON:
        raise InvalidInput(f"{name} is {len(text)} characters; at most {MAX_REASON}. Say it in one line.")
    if _CONTROL_CHARS.search(text):
        raise InvalidInput(f"{name} contains control characters; use plain text.")
    return text


def check_overrides(overrides: Any) -> dict[str, Any]:
    """A dict of train.py constant -> literal (the values are checked by `variants`)."""
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise InvalidInput("overrides must be an object mapping train.py constant names to literal values, "
                           f"e.g. {{\"DEPTH\": 10}}; got {type(overrides).__name__}.")
    return dict(overrides)


def check_exp_id(exp_id: Any, what: str = "experiment_id") -> str:
    if not isinstance(exp_id, str) or not EXP_ID.match(exp_id):
        raise InvalidInput(f"{what} must be an experiment id like 'e0042', got {short(exp_id)}. "
                           f"Call {Tool.FETCH_RESULTS} to list experiments.")
    return exp_id


class Checks:
    """The checks that read the engine's state: the ledger (ids, live counts, GPU-hours), the
    scheduler's slots (GPU types up) and the config's limits."""

    def __init__(self, ledger: Ledger, scheduler: Scheduler, config: FleetConfig, backend_name: str) -> None:
        self.ledger = ledger
        self.scheduler = scheduler
        self.config = config
        self.backend_name = backend_name

    def experiment(self, exp_id: Any, what: str = "experiment_id") -> Experiment:
        """The experiment with this id (InvalidInput for a malformed id, NotFound for an unknown one)."""
        exp = self.ledger.get(check_exp_id(exp_id, what))
        if exp is None:
            last = self.ledger.max_experiment_seq()
            span = f"ids run from e0001 to {format_exp_id(last)}" if last else "no experiment has been launched yet"
            raise NotFound(f"No experiment {exp_id} ({span}). Call {Tool.FETCH_RESULTS} to list experiments.")
        return exp

    def experiment_ids(self, ids: Any, what: str = "experiment_ids", max_n: int = MAX_IDS) -> list[str]:
        """A non-empty list of known experiment ids, without duplicates (order kept)."""
        if not isinstance(ids, (list, tuple)) or not ids:
            raise InvalidInput(f"{what} must be a non-empty list of experiment ids like ['e0001', 'e0002'].")
        if len(ids) > max_n:
            raise InvalidInput(f"{what} has {len(ids)} ids; at most {max_n} per call.")
        out = list(dict.fromkeys(check_exp_id(i, what) for i in ids))
        known = self.ledger.existing_ids(out)
        missing = [i for i in out if i not in known]
        if missing:
            raise NotFound(f"Unknown experiment id{'s' if len(missing) > 1 else ''}: {', '.join(missing[:20])}. "
                           f"Nothing was changed. Call {Tool.FETCH_RESULTS} to list experiments.")
        return out

    def wave(self, wave_id: Any) -> Wave:
        if not isinstance(wave_id, str) or not WAVE_ID.match(wave_id):
            raise InvalidInput(f"wave_id must be a wave id like 'w0003', got {short(wave_id)}.")
        wave = self.ledger.get_wave(wave_id)
        if wave is None:
            last = self.ledger.max_wave_seq()
            raise NotFound(f"No wave {wave_id} "
                           f"({f'waves run from w0001 to {format_wave_id(last)}' if last else 'no wave yet'}).")
        return wave

    def gpu_types_available(self) -> dict[str, int]:
        """GPU type -> slots of it that are up or coming up."""
        types: dict[str, int] = {}
        for c in self.scheduler.slots():
            if c.state in ("up", "provisioning"):
                types[c.gpu_type] = types.get(c.gpu_type, 0) + 1
        return types

    def describe_types(self) -> str:
        types = self.gpu_types_available()
        return (", ".join(f"{t} ({n} slot{'s' if n != 1 else ''})" for t, n in sorted(types.items()))
                or "none (no slots up)")

    def gpu_type(self, gpu_type: Any, required: bool = False) -> str | None:
        """The name of a GPU type some slot has (as the slots spell it), or None for any slot."""
        if gpu_type is None:
            if required:
                raise InvalidInput(f"gpu_type is required here; available: {self.describe_types()}.")
            return None
        if not isinstance(gpu_type, str) or not gpu_type.strip() or len(gpu_type) > 64:
            raise InvalidInput(f"gpu_type must be a GPU type name such as 'H100' (or omitted for any slot), "
                               f"got {short(gpu_type)}. Available: {self.describe_types()}.")
        available = self.gpu_types_available()
        known = gpus.find(gpu_type)
        name = known.name if known else gpu_type.strip()
        match = {t.lower(): t for t in available}.get(name.lower())
        if match is None:
            choose = "choose one of those" if required else "choose one of those, or omit gpu_type for any slot"
            more = (f"{Tool.PROVISION_CLUSTERS}(count=1, gpu_type={gpu_type!r}) adds one"
                    if self.backend_name != "local" else
                    "local slots are set when the server starts (restart it with --simulate-tiers "
                    f"{name},... to label them as GPU types)")
            raise InvalidInput(f"No slot of GPU type {gpu_type!r}. Available: {self.describe_types()}; "
                               f"{choose}, or {more}.")
        return match

    def common_gpu_type(self) -> str | None:
        """In a fleet of several GPU types, the one with the most slots (ties: by name), where a
        launch of several comparable runs goes when it names no type; None in a one-type fleet
        (any slot will do)."""
        types = self.gpu_types_available()
        if len(types) < 2:
            return None
        return min(types, key=lambda t: (-types[t], t))

    def capacity(self, n: int) -> None:
        """Room for n more live experiments: under MAX_QUEUED live, and GPU-hour budget left."""
        counts = self.ledger.count_by_status()
        live = counts.get("queued", 0) + counts.get("running", 0)
        if live + n > MAX_QUEUED:
            raise LimitExceeded(
                f"{live} experiments are queued or running and this launch adds {n}; the server allows at most "
                f"{MAX_QUEUED} live at once. Wait for some ({Tool.WAIT_FOR_EXPERIMENTS}) or {Tool.CANCEL_EXPERIMENTS}, "
                "then launch again.")
        budget = self.config.gpu_hour_budget
        if budget is not None:
            usage = self.ledger.usage()
            spent = usage["gpu_hours"] + usage["gpu_hours_in_flight"]
            if spent >= budget:
                raise LimitExceeded(
                    f"GPU-hour budget spent: {spent:.3f} of {budget:.3f} GPU-hours used (limit gpu_hour_budget). "
                    f"No new launches; this launch asked for {n} experiment{'s' if n != 1 else ''}. "
                    f"Call {Tool.BUDGET_STATUS} for details; raise the limit in the server config to continue.")
