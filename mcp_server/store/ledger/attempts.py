"""The life of an attempt (`AttemptsMixin`): the state machine of one run of an experiment.

    queued --begin_attempt--> running [waiting_for_slot] --mark_started--> running
    running --finish_attempt--> done | crash | timeout | cancelled   (terminal)
    running --lose_attempt--> queued (attempts left) | lost          (domain.retry decides)
    queued --cancel_queued--> cancelled

Rules ("nothing recorded twice"): every transition is one `tx()` guarded by the state it leaves
(`status='running' AND attempts=?`, `outcome IS NULL`), so a result seen twice (a poll after a
restart, a cancel racing a finish) is recorded once: the second call changes nothing and returns
False / None. The experiment row and its attempt row change in the same transaction.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mcp_server.domain.models import Metrics, Status
from mcp_server.domain.retry import next_status_after_loss
from mcp_server.runtime.runner import LOG_FILE
from mcp_server.store.ledger.connection import LedgerBase
from mcp_server.store.ledger.schema import METRIC_FIELDS


class AttemptsMixin(LedgerBase):
    """begin / mark_started / set_handle / finish / lose an attempt; cancel queued experiments."""

    def begin_attempt(self, exp_id: str, attempt: int, cluster: str, gpu_type: str | None,
                      gpu_count: int, cost_per_hour: float | None, run_dir: str, *,
                      waiting: bool = False) -> bool:
        """queued -> running with a new attempt row (handle to follow). False if not queued.
        `waiting`: it is queued ahead behind another job on its slot, so it has not started (no
        start time, no GPU-hours) until `mark_started`; otherwise it starts now."""
        now = time.time()
        start = None if waiting else now
        with self.tx() as c:
            cur = c.execute("UPDATE experiments SET status='running', attempts=?, cluster=?, ran_on_gpu=?, "
                            "handle=NULL, started_at=COALESCE(started_at, ?), log_path=?, waiting_for_slot=? "
                            "WHERE id=? AND status='queued' AND attempts=?",
                            (attempt, cluster, gpu_type, start, str(Path(run_dir) / LOG_FILE), int(waiting),
                             exp_id, attempt - 1))
            if cur.rowcount != 1:
                return False
            c.execute("INSERT INTO attempts(experiment_id, attempt, cluster, gpu_type, gpu_count, cost_per_hour, "
                      "run_dir, submitted_at, started_at) VALUES(?,?,?,?,?,?,?,?,?)",
                      (exp_id, attempt, cluster, gpu_type, gpu_count, cost_per_hour, run_dir, now, start))
        return True

    def mark_started(self, exp_id: str, attempt: int, started_at: float) -> bool:
        """The open attempt really started (a queued-ahead job whose turn came). Idempotent: the
        first start known is kept. True if the experiment stopped waiting for its slot."""
        with self.tx() as c:
            cur = c.execute("UPDATE attempts SET started_at=? WHERE experiment_id=? AND attempt=? "
                            "AND outcome IS NULL AND started_at IS NULL", (started_at, exp_id, attempt))
            if cur.rowcount != 1:
                return False
            c.execute("UPDATE experiments SET waiting_for_slot=0, started_at=COALESCE(started_at, ?) "
                      "WHERE id=? AND attempts=? AND status='running'", (started_at, exp_id, attempt))
            c.execute("INSERT INTO events(experiment_id, t, kind, detail) VALUES(?,?,?,?)",
                      (exp_id, started_at, "started", f"attempt {attempt}"))
        return True

    def set_handle(self, exp_id: str, attempt: int, handle_json: str, submitted_at: float) -> None:
        with self.tx() as c:
            c.execute("UPDATE attempts SET handle=?, submitted_at=? WHERE experiment_id=? AND attempt=?",
                      (handle_json, submitted_at, exp_id, attempt))
            c.execute("UPDATE experiments SET handle=? WHERE id=? AND attempts=? AND status='running'",
                      (handle_json, exp_id, attempt))
            c.execute("INSERT INTO events(experiment_id, t, kind, detail) VALUES(?,?,?,?)",
                      (exp_id, time.time(), "submitted", f"attempt {attempt}"))

    def open_attempts(self) -> list[dict[str, Any]]:
        """Attempts of running experiments that have no outcome yet."""
        rows = self._conn().execute(
            "SELECT a.experiment_id, a.attempt, a.cluster, a.gpu_type, a.run_dir, a.handle, a.submitted_at "
            "FROM attempts a JOIN experiments e ON e.id=a.experiment_id AND e.attempts=a.attempt "
            "WHERE a.outcome IS NULL AND e.status='running' ORDER BY e.seq").fetchall()
        keys = ["experiment_id", "attempt", "cluster", "gpu_type", "run_dir", "handle", "submitted_at"]
        return [dict(zip(keys, r, strict=False)) for r in rows]

    def finish_attempt(self, exp_id: str, attempt: int, status: Status, *, metrics: Metrics | None = None,
                       error: str | None = None, log_path: str | None = None, ended_at: float | None = None,
                       busy_seconds: float | None = None, detail: str = "", started_at: float | None = None) -> bool:
        """Record the terminal result of one attempt. Atomic and idempotent: False if the attempt was
        already closed (or the experiment is no longer running that attempt)."""
        now = time.time()
        ended_at = ended_at or now
        with self.tx() as c:
            row = c.execute("SELECT started_at FROM attempts WHERE experiment_id=? AND attempt=? AND outcome IS NULL",
                            (exp_id, attempt)).fetchone()
            if row is None:
                return False
            start = row[0] if row[0] is not None else started_at   # None: it never left the slot's queue
            busy = busy_seconds if busy_seconds is not None else (max(0.0, ended_at - start) if start else 0.0)
            cur = c.execute("UPDATE experiments SET status=?, error=?, log_path=COALESCE(?, log_path), "
                            "ended_at=?, handle=NULL, waiting_for_slot=0, started_at=COALESCE(started_at, ?) "
                            "WHERE id=? AND attempts=? AND status='running'",
                            (status.value, error, log_path, ended_at, started_at, exp_id, attempt))
            if cur.rowcount != 1:
                return False
            c.execute("UPDATE attempts SET outcome=?, ended_at=?, busy_seconds=?, started_at=COALESCE(started_at, ?) "
                      "WHERE experiment_id=? AND attempt=?",
                      (status.value, ended_at, busy, started_at, exp_id, attempt))
            if metrics is not None:
                vals = metrics.model_dump()
                extra = metrics.model_extra or {}
                c.execute(f"UPDATE experiments SET {', '.join(f'{k}=?' for k in METRIC_FIELDS)}, metrics_extra=? "
                          "WHERE id=?",
                          (*[vals[k] for k in METRIC_FIELDS], json.dumps(extra, sort_keys=True) if extra else None,
                           exp_id))
            if started_at is not None and c.execute(   # when the runner really started (unless mark_started said)
                    "SELECT 1 FROM events WHERE experiment_id=? AND kind='started' AND detail=?",
                    (exp_id, f"attempt {attempt}")).fetchone() is None:
                c.execute("INSERT INTO events(experiment_id, t, kind, detail) VALUES(?,?,?,?)",
                          (exp_id, started_at, "started", f"attempt {attempt}"))
            kind = ("cancelled" if status == Status.cancelled
                    else "timeout" if status == Status.timeout else "finished")
            c.execute("INSERT INTO events(experiment_id, t, kind, detail) VALUES(?,?,?,?)",
                      (exp_id, now, kind, f"attempt {attempt}: {status.value}" + (f" ({detail})" if detail else "")))
        return True

    def lose_attempt(self, exp_id: str, attempt: int, max_attempts: int, reason: str = "",
                     log_path: str | None = None) -> Status | None:
        """The slot/process vanished: requeue (attempts left) or mark lost. None if already closed."""
        now = time.time()
        with self.tx() as c:
            row = c.execute("SELECT started_at FROM attempts WHERE experiment_id=? AND attempt=? AND outcome IS NULL",
                            (exp_id, attempt)).fetchone()
            if row is None:
                return None
            new = next_status_after_loss(attempt, max_attempts)
            cur = c.execute(
                "UPDATE experiments SET status=?, handle=NULL, ended_at=?, error=?, log_path=COALESCE(?, log_path), "
                "waiting_for_slot=0 "
                "WHERE id=? AND attempts=? AND status='running'",
                (new.value, now if new == Status.lost else None,
                 f"attempt {attempt} lost: {reason}" if reason else f"attempt {attempt} lost", log_path,
                 exp_id, attempt))
            if cur.rowcount != 1:
                return None
            c.execute("UPDATE attempts SET outcome='lost', ended_at=?, busy_seconds=? "
                      "WHERE experiment_id=? AND attempt=?",
                      (now, max(0.0, now - row[0]) if row[0] is not None else 0.0, exp_id, attempt))
            c.execute("INSERT INTO events(experiment_id, t, kind, detail) VALUES(?,?,?,?)",
                      (exp_id, now, "lost", f"attempt {attempt}: {reason}"))
            if new == Status.queued:
                c.execute("INSERT INTO events(experiment_id, t, kind, detail) VALUES(?,?,?,?)",
                          (exp_id, now, "requeued", f"attempt {attempt + 1} of {max_attempts}"))
        return new

    def cancel_queued(self, exp_ids: list[str], reason: str = "") -> list[str]:
        """queued -> cancelled. Returns the ids actually changed."""
        now = time.time()
        done = []
        with self.tx() as c:
            for eid in exp_ids:
                cur = c.execute("UPDATE experiments SET status='cancelled', ended_at=?, error=? "
                                "WHERE id=? AND status='queued'", (now, reason or "cancelled", eid))
                if cur.rowcount == 1:
                    done.append(eid)
                    c.execute("INSERT INTO events(experiment_id, t, kind, detail) VALUES(?,?,?,?)",
                              (eid, now, "cancelled", reason or "while queued"))
        return done

    def attempts(self, exp_id: str) -> list[dict[str, Any]]:
        keys = ["attempt", "cluster", "gpu_type", "run_dir", "submitted_at", "started_at", "ended_at", "busy_seconds",
                "outcome"]
        rows = self._conn().execute(f"SELECT {', '.join(keys)} FROM attempts WHERE experiment_id=? ORDER BY attempt",
                                    (exp_id,)).fetchall()
        return [dict(zip(keys, r, strict=False)) for r in rows]


__all__ = ["AttemptsMixin"]
