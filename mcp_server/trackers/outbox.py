"""The trackers' durable outbox: what each tracker has received, per experiment, in its own SQLite
file beside the ledger (`.autoresearch/trackers.db`; the ledger's schema is not touched).

A terminal experiment is pending for a tracker until the tracker holds its current *signature*
(status, decision, verdict, metric value): so a restart, a tracker that was down, or a keep/discard
after the export all come out as pending again, and nothing is exported twice. A run created but
not completed (the tracker went away mid-export) is remembered as `partial`, so the retry replaces
it instead of adding a second run."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS exported (
    tracker       TEXT NOT NULL,
    experiment_id TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    signature     TEXT,            -- NULL while partial (created, not completed)
    updated_at    REAL NOT NULL,
    PRIMARY KEY (tracker, experiment_id)
);
"""


class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)

    def state(self, tracker: str) -> dict[str, tuple[str, str | None]]:
        """experiment id -> (run id, signature or None when partial)."""
        with self._lock:
            rows = self._conn.execute("SELECT experiment_id, run_id, signature FROM exported WHERE tracker=?",
                                      (tracker,)).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def get(self, tracker: str, exp_id: str) -> tuple[str, str | None] | None:
        with self._lock:
            row = self._conn.execute("SELECT run_id, signature FROM exported WHERE tracker=? AND experiment_id=?",
                                     (tracker, exp_id)).fetchone()
        return (row[0], row[1]) if row else None

    def record(self, tracker: str, exp_id: str, run_id: str, signature: str | None) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO exported(tracker, experiment_id, run_id, signature, updated_at) VALUES(?,?,?,?,?) "
                "ON CONFLICT(tracker, experiment_id) DO UPDATE SET run_id=excluded.run_id, "
                "signature=excluded.signature, updated_at=excluded.updated_at",
                (tracker, exp_id, run_id, signature, time.time()))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
