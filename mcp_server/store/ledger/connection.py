"""The ledger's connections, write transactions, migrations and change hook (`LedgerBase`).

Rules:

* One SQLite connection per thread (`threading.local`), in WAL mode so readers never block the
  writer; connections of threads that have ended are closed when a new one is opened.
* Every write goes through `tx()`: BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any exception), under a
  process-wide lock so two threads of the engine never interleave a read-modify-write.
* The change hook: TEMP triggers on `experiments` (per connection, not part of the schema, so the
  file is the same) call back into Python with the id of every row a statement inserts or
  updates. `tx()` collects those ids and, after a COMMIT that changed experiments, calls every
  subscriber (`subscribe(fn)`) with them, outside the write lock and before the write method
  returns. A write method cannot forget to notify; a rolled-back transaction notifies nothing.
* Opening a ledger migrates it (`schema.MIGRATIONS`); one written by a newer version is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mcp_server.store.ledger.schema import MIGRATIONS, SCHEMA_VERSION, LedgerError

log = logging.getLogger("autoresearch.ledger")

#: a subscriber of the change hook: called with the ids of the experiments a committed write changed
ChangeListener = Callable[[list[str]], None]

_TOUCHED_FN = "autoresearch_touched"
_CHANGE_TRIGGERS = [
    f"CREATE TEMP TRIGGER IF NOT EXISTS autoresearch_experiment_{op.lower()} AFTER {op} ON main.experiments "
    f"BEGIN SELECT {_TOUCHED_FN}(NEW.id); END"
    for op in ("INSERT", "UPDATE")
]


class LedgerBase:
    """Connections, transactions, migrations and the change hook of one ledger file."""

    def __init__(self, path: str | os.PathLike[str], *, migrate: bool = True) -> None:
        """Open (and create) the ledger at `path`, bringing its schema up to this version. A reader
        that must not change the file under a running server (the CLI's status, report and
        dashboard) passes `migrate=False`: an older schema is then refused, saying what to do."""
        self.path = Path(path)
        self._may_migrate = migrate
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._all_conns: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._conns_lock = threading.Lock()
        self._listeners: list[ChangeListener] = []
        self._listeners_lock = threading.Lock()
        self._schema_ready = False     # the change triggers need the experiments table
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # -- connections ---------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            if self._schema_ready:
                self._install_change_hook(conn)
            with self._conns_lock:
                # connections of threads that have ended (worker pools come and go) are closed here
                alive = []
                for ref, other in self._all_conns:
                    thread = ref()
                    if thread is None or not thread.is_alive():
                        with contextlib.suppress(sqlite3.Error):
                            other.close()
                    else:
                        alive.append((ref, other))
                alive.append((weakref.ref(threading.current_thread()), conn))
                self._all_conns = alive
        return conn

    def close(self) -> None:
        """Close every connection this ledger opened (in any thread)."""
        with self._conns_lock:
            conns, self._all_conns = self._all_conns, []
        for _, conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    # -- the change hook -----------------------------------------------------------------------
    def _install_change_hook(self, conn: sqlite3.Connection) -> None:
        """Make this thread's connection collect the ids of the experiments its statements insert
        or update (into `self._local.touched`, read by `tx()`)."""
        touched: dict[str, None] = {}      # a dict: the ids in the order first touched
        conn.create_function(_TOUCHED_FN, 1, touched.setdefault)
        for sql in _CHANGE_TRIGGERS:
            conn.execute(sql)
        self._local.touched = touched

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Call `listener(ids)` after every committed write transaction that inserted or updated
        experiments (from the writing thread, after the COMMIT, before the write method returns).
        Returns a function that unsubscribes it."""
        with self._listeners_lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._listeners_lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)
        return unsubscribe

    def _notify(self, ids: list[str]) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(ids)
            except Exception:  # noqa: BLE001 - the write is committed: its caller must hear its result
                log.exception("a ledger change listener failed")

    # -- transactions --------------------------------------------------------------------------
    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception). After the
        COMMIT, the subscribers hear which experiments it inserted or updated."""
        changed: list[str] = []
        with self._write_lock:
            conn = self._conn()
            touched: dict[str, None] | None = getattr(self._local, "touched", None)
            if touched is not None:
                touched.clear()     # only this transaction's writes (a write outside tx() is not announced)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                if touched is not None:
                    touched.clear()
                raise
            else:
                conn.execute("COMMIT")
                if touched:
                    changed = list(touched)
                    touched.clear()
        if changed:
            self._notify(changed)

    def _migrate(self) -> None:
        conn = self._conn()
        with self._write_lock:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path} has schema version {version}, newer than this server's "
                    f"{SCHEMA_VERSION}: upgrade autoresearch-fleet to open it.")
            if version < SCHEMA_VERSION and not self._may_migrate:
                raise LedgerError(
                    f"{self.path} has schema version {version}, older than this version's {SCHEMA_VERSION}; "
                    f"a reader does not upgrade it (a server of the older version may be using it). Stop that "
                    f"server and start `autoresearch-fleet serve` of this version once: it upgrades the ledger.")
            for i in range(version, SCHEMA_VERSION):
                # executescript commits first; the script is its own transaction.
                conn.executescript(f"BEGIN IMMEDIATE;\n{MIGRATIONS[i]}\nPRAGMA user_version = {i + 1};\nCOMMIT;")
            self._install_change_hook(conn)
            self._schema_ready = True

    @property
    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    # -- tests & diagnostics ---------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        """Every row of every table (used by the tests to prove that a call changed nothing)."""
        conn = self._conn()
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in tables}

    def row_counts(self) -> dict[str, int]:
        conn = self._conn()
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


__all__ = ["ChangeListener", "LedgerBase"]
