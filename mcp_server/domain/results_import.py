"""Reading an earlier results.tsv (karpathy/autoresearch's file, or any table with a commit, a
metric, a status and a description column) as history to import (`autoresearch-fleet
import-results`). Pure: text in, rows out; a malformed file is refused whole, naming the line.

Statuses: karpathy's `keep` / `discard` are finished runs with that decision, `crash` a failed
run; the fleet's own statuses (done, crash, nan, oom, timeout, ...) are read as themselves.
"""

from __future__ import annotations

import hashlib
import math
import re

from pydantic import BaseModel

from mcp_server.domain.errors import InvalidInput
from mcp_server.domain.models import Decision, Status

#: the columns a results.tsv has besides its metric (karpathy's and the fleet's export)
KNOWN_COLUMNS = frozenset({"commit", "memory_gb", "status", "description", "id", "wave", "gpu", "cluster",
                           "seed", "steps", "decision"})
REQUIRED = ("commit", "status", "description")
_COMMIT = re.compile(r"^[0-9a-fA-F]{4,40}$")
MAX_IMPORT_ROWS = 100_000


class ImportRow(BaseModel):
    line: int
    commit: str | None
    value: float | None
    memory_gb: float | None
    status: Status
    decision: Decision | None
    description: str
    key: str  # identity of the row in its file: re-importing the same file adds nothing


def _status(raw: str, line: int) -> tuple[Status, Decision | None]:
    s = raw.strip().lower()
    if s in ("keep", "discard"):
        return Status.done, Decision(s)
    try:
        st = Status(s)
    except ValueError:
        raise InvalidInput(
            f"line {line}: status {raw!r} is not one of keep, discard, crash (karpathy's) or "
            f"{', '.join(x.value for x in Status)}. Nothing was imported.") from None
    if st in (Status.queued, Status.running):
        raise InvalidInput(f"line {line}: status {raw!r} is not a finished run; only finished runs can be imported. "
                           "Nothing was imported.")
    return st, None


def parse_results_tsv(text: str, metric: str | None = None) -> tuple[str, list[ImportRow]]:
    """(metric column, rows) of a results.tsv. `metric`: the column to read (the task's metric);
    None = the one column that is not a known one (karpathy's second column). InvalidInput
    naming the line for anything malformed."""
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise InvalidInput("line 1: the file is empty; a results.tsv starts with a header line "
                           "(commit, <metric>, memory_gb, status, description). Nothing was imported.")
    header = [h.strip() for h in lines[0].split("\t")]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InvalidInput(f"line 1: the header lacks {', '.join(missing)} (it has {', '.join(header)}); give a "
                           "tab-separated file with commit, <metric>, status and description columns. "
                           "Nothing was imported.")
    if len(set(header)) != len(header):
        raise InvalidInput(f"line 1: a column name repeats in the header ({', '.join(header)}). Nothing was imported.")
    if metric is None or metric not in header:
        candidates = [h for h in header if h not in KNOWN_COLUMNS]
        if metric is not None and metric not in header and len(candidates) != 1:
            raise InvalidInput(f"line 1: no column {metric!r} (the task's metric) in the header "
                               f"({', '.join(header)}). Nothing was imported.")
        if len(candidates) != 1:
            raise InvalidInput(f"line 1: cannot tell the metric column: expected exactly one column besides "
                               f"{', '.join(sorted(KNOWN_COLUMNS))}; found {candidates or 'none'}. "
                               "Nothing was imported.")
        metric = candidates[0]
    col = {h: i for i, h in enumerate(header)}
    rows: list[ImportRow] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        cells = raw.split("\t")
        if len(cells) != len(header):
            raise InvalidInput(f"line {n}: {len(cells)} tab-separated fields, the header has {len(header)}. "
                               "Nothing was imported.")
        get = {h: cells[i].strip() for h, i in col.items()}
        commit = get["commit"] or None
        if commit is not None and not _COMMIT.fullmatch(commit):
            raise InvalidInput(f"line {n}: commit {commit!r} is not a hex commit id (4-40 hex digits). "
                               "Nothing was imported.")
        status, decision = _status(get["status"], n)
        value = _number(get[metric], metric, n)
        mem = _number(get["memory_gb"], "memory_gb", n) if "memory_gb" in get and get["memory_gb"] else None
        if status == Status.done and value is None:
            raise InvalidInput(f"line {n}: status {get['status']!r} needs a {metric} value. Nothing was imported.")
        if status != Status.done:
            value = None   # karpathy writes 0.000000 for a crash
        ident = "\t".join([commit or "", get[metric], get["status"], get["description"]])
        seen[ident] = seen.get(ident, 0) + 1
        key = hashlib.sha256(f"{ident}\t#{seen[ident]}".encode()).hexdigest()
        rows.append(ImportRow(line=n, commit=commit, value=value, memory_gb=mem, status=status, decision=decision,
                              description=get["description"] or f"imported line {n}", key=key))
        if len(rows) > MAX_IMPORT_ROWS:
            raise InvalidInput(f"line {n}: more than {MAX_IMPORT_ROWS} rows; split the file. Nothing was imported.")
    return metric, rows


def _number(raw: str, what: str, line: int) -> float | None:
    if raw == "" or raw.lower() in ("nan", "none", "n/a"):
        return None
    try:
        v = float(raw)
    except ValueError:
        raise InvalidInput(f"line {line}: {what} {raw!r} is not a number. Nothing was imported.") from None
    return v if math.isfinite(v) else None


__all__ = ["ImportRow", "parse_results_tsv"]
