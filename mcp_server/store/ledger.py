"""The ledger: every experiment, attempt, wave, slot and event of a research session, in SQLite.

One file, `<workspace>/.autoresearch/ledger.db`, in WAL mode so readers never block the writer.
The schema is versioned with `PRAGMA user_version` and an ordered list of migrations: opening an
older ledger upgrades it in place, opening one written by a newer version is refused.

Thread safety: one SQLite connection per thread (`threading.local`), plus a process-wide lock
around write transactions so two threads of the engine never interleave a read-modify-write.

"Nothing recorded twice": every run of an experiment is an *attempt* (`attempts` table, primary
key experiment + attempt number). A result is recorded by closing the attempt row
(`outcome IS NULL` -> outcome) and updating the experiment in the same transaction; closing an
already-closed attempt changes nothing and returns False. So a result seen twice (a poll after a
restart, a cancel racing a finish) is recorded once.

`results.tsv` is an export: the columns of karpathy/autoresearch's file (commit, val_bpb,
memory_gb, status, description) followed by id, wave, gpu, cluster, seed, steps, decision.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from mcp_server.domain.ids import id_seq
from mcp_server.domain.models import TERMINAL, Cluster, Decision, Experiment, Metrics, Status, Wave

# --------------------------------------------------------------------------------------------
# schema

METRIC_FIELDS = list(Metrics.model_fields)  # val_bpb, training_seconds, ... device

#: Ordered migrations. Migration i (0-based) brings the ledger from user_version i to i+1.
#: Never edit a released migration: append a new one.
MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE clusters (
        name          TEXT PRIMARY KEY,
        backend       TEXT NOT NULL,
        gpu_type      TEXT NOT NULL,
        gpu_count     INTEGER NOT NULL DEFAULT 1,
        state         TEXT NOT NULL,
        cost_per_hour REAL,
        simulated     INTEGER NOT NULL DEFAULT 0,
        created_at    REAL NOT NULL DEFAULT 0,
        updated_at    REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE waves (
        seq         INTEGER PRIMARY KEY,
        id          TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL,
        kind        TEXT NOT NULL,
        design      TEXT NOT NULL DEFAULT '{}',
        created_at  REAL NOT NULL
    );
    CREATE TABLE experiments (
        seq              INTEGER PRIMARY KEY,
        id               TEXT NOT NULL UNIQUE,
        description      TEXT NOT NULL,
        kind             TEXT NOT NULL DEFAULT 'single',
        wave_id          TEXT REFERENCES waves(id),
        parent_id        TEXT,
        parent_commit    TEXT,
        commit_sha       TEXT,
        code_hash        TEXT,
        parent_code_hash TEXT,
        harness_hash     TEXT,
        overrides        TEXT NOT NULL DEFAULT '{}',
        seed             INTEGER NOT NULL DEFAULT 0,
        gpu_type         TEXT,
        priority         INTEGER NOT NULL DEFAULT 0,
        status           TEXT NOT NULL,
        decision         TEXT,
        cluster          TEXT,
        ran_on_gpu       TEXT,
        attempts         INTEGER NOT NULL DEFAULT 0,
        val_bpb          REAL,
        training_seconds REAL,
        total_seconds    REAL,
        peak_vram_mb     REAL,
        mfu_percent      REAL,
        total_tokens_M   REAL,
        num_steps        INTEGER,
        num_params_M     REAL,
        depth            INTEGER,
        device           TEXT,
        error            TEXT,
        log_path         TEXT,
        handle           TEXT,
        created_at       REAL NOT NULL,
        started_at       REAL,
        ended_at         REAL
    );
    CREATE INDEX experiments_queue ON experiments(status, priority DESC, seq);
    CREATE INDEX experiments_wave ON experiments(wave_id, seq);
    CREATE INDEX experiments_board ON experiments(status, ran_on_gpu, val_bpb);
    CREATE INDEX experiments_code ON experiments(code_hash);
    CREATE TABLE attempts (
        experiment_id TEXT NOT NULL REFERENCES experiments(id),
        attempt       INTEGER NOT NULL,
        cluster       TEXT NOT NULL,
        gpu_type      TEXT,
        gpu_count     INTEGER NOT NULL DEFAULT 1,
        cost_per_hour REAL,
        run_dir       TEXT NOT NULL,
        handle        TEXT,
        submitted_at  REAL NOT NULL,
        ended_at      REAL,
        busy_seconds  REAL,
        outcome       TEXT,
        PRIMARY KEY (experiment_id, attempt)
    );
    CREATE INDEX attempts_open ON attempts(outcome) WHERE outcome IS NULL;
    CREATE TABLE events (
        seq           INTEGER PRIMARY KEY,
        experiment_id TEXT,
        t             REAL NOT NULL,
        kind          TEXT NOT NULL,
        detail        TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX events_experiment ON events(experiment_id, seq);
    """,
    # 2: the real start of a job queued ahead on its slot (submitted while the job in front of it
    # still runs). attempts.started_at: when it started training (NULL while it waits; in-flight
    # GPU-hours count from it); earlier attempts started at submission. experiments.waiting_for_slot:
    # 1 while its current attempt waits behind another job.
    """
    ALTER TABLE attempts ADD COLUMN started_at REAL;
    UPDATE attempts SET started_at = submitted_at;
    ALTER TABLE experiments ADD COLUMN waiting_for_slot INTEGER NOT NULL DEFAULT 0;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

EVENT_KINDS = frozenset({
    "queued", "submitted", "started", "finished", "lost", "requeued", "cancelled", "kept",
    "discarded", "timeout", "submit_failed", "recovered", "note",
})

_EXP_COLUMNS = [
    "seq", "id", "description", "kind", "wave_id", "parent_id", "parent_commit", "commit_sha",
    "code_hash", "parent_code_hash", "harness_hash", "overrides", "seed", "gpu_type", "priority",
    "status", "decision", "cluster", "ran_on_gpu", "attempts", *METRIC_FIELDS, "error",
    "log_path", "handle", "created_at", "started_at", "ended_at", "waiting_for_slot",
]
_EXP_SELECT = ", ".join(_EXP_COLUMNS)

TSV_COLUMNS = ["commit", "val_bpb", "memory_gb", "status", "description",
               "id", "wave", "gpu", "cluster", "seed", "steps", "decision"]


class LedgerError(RuntimeError):
    """The ledger file cannot be used (written by a newer version, corrupt)."""


_STATUS = {s.value: s for s in Status}
_DECISION = {d.value: d for d in Decision}
_EXP_FIELDS = frozenset(Experiment.model_fields)
_METRIC_SET = frozenset(METRIC_FIELDS)


def _fast_model(cls: type, values: dict[str, Any]) -> Any:
    """Build a pydantic model from trusted, complete values without validation (what
    `model_construct` does, minus its per-field default handling: ~10x faster at 10k rows)."""
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", values)
    object.__setattr__(obj, "__pydantic_fields_set__", set(values))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


def _row_to_experiment(row: sqlite3.Row | tuple) -> Experiment:
    d = dict(zip(_EXP_COLUMNS, row))
    metrics = _fast_model(Metrics, {k: d[k] for k in METRIC_FIELDS})
    decision = d["decision"]
    overrides = d["overrides"]
    return _fast_model(Experiment, {
        "id": d["id"], "description": d["description"], "wave_id": d["wave_id"], "parent_id": d["parent_id"],
        "parent_commit": d["parent_commit"], "commit": d["commit_sha"], "code_hash": d["code_hash"],
        "parent_code_hash": d["parent_code_hash"], "harness_hash": d["harness_hash"],
        "overrides": json.loads(overrides) if overrides and overrides != "{}" else {}, "seed": d["seed"],
        "gpu_type": d["gpu_type"], "priority": d["priority"], "status": _STATUS[d["status"]],
        "decision": _DECISION[decision] if decision else None, "cluster": d["cluster"],
        "ran_on_gpu": d["ran_on_gpu"], "attempts": d["attempts"], "metrics": metrics, "error": d["error"],
        "log_path": d["log_path"], "created_at": d["created_at"], "started_at": d["started_at"],
        "ended_at": d["ended_at"], "waiting_for_slot": bool(d["waiting_for_slot"]),
    })


def _clean_tsv(text: Any) -> str:
    return " ".join(str(text).split())


class Ledger:
    """The SQLite ledger of one research workspace. Safe to share between threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._all_conns: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._conns_lock = threading.Lock()
        self._migrate()

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
            with self._conns_lock:
                # connections of threads that have ended (worker pools come and go) are closed here
                alive = []
                for ref, other in self._all_conns:
                    thread = ref()
                    if thread is None or not thread.is_alive():
                        try:
                            other.close()
                        except sqlite3.Error:
                            pass
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
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception)."""
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    def _migrate(self) -> None:
        conn = self._conn()
        with self._write_lock:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path} has schema version {version}, newer than this server's "
                    f"{SCHEMA_VERSION}: upgrade autoresearch-fleet to open it.")
            for i in range(version, SCHEMA_VERSION):
                # executescript commits first; the script is its own transaction.
                conn.executescript(f"BEGIN IMMEDIATE;\n{MIGRATIONS[i]}\nPRAGMA user_version = {i + 1};\nCOMMIT;")

    @property
    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    # -- meta ------------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def meta(self) -> dict[str, str]:
        return dict(self._conn().execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                      (key, value))

    def init_session(self, **values: str) -> dict[str, str]:
        """Pin session facts (harness hash, profile, tag) the first time; later calls keep them."""
        with self.tx() as c:
            for k, v in values.items():
                c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES(?, ?)", (k, str(v)))
            c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES('created_at', ?)", (repr(time.time()),))
        return self.meta()

    # -- ids -------------------------------------------------------------------------------------
    def max_experiment_seq(self) -> int:
        return self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM experiments").fetchone()[0]

    def max_wave_seq(self) -> int:
        return self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM waves").fetchone()[0]

    # -- clusters --------------------------------------------------------------------------------
    def upsert_clusters(self, clusters: Iterable[Cluster], mark_missing_gone: bool = False) -> None:
        now = time.time()
        clusters = list(clusters)
        with self.tx() as c:
            for cl in clusters:
                c.execute(
                    """INSERT INTO clusters(name, backend, gpu_type, gpu_count, state, cost_per_hour,
                       simulated, created_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?)
                       ON CONFLICT(name) DO UPDATE SET backend=excluded.backend,
                       gpu_type=excluded.gpu_type, gpu_count=excluded.gpu_count, state=excluded.state,
                       cost_per_hour=excluded.cost_per_hour, simulated=excluded.simulated,
                       updated_at=excluded.updated_at""",
                    (cl.name, cl.backend, cl.gpu_type, cl.gpu_count, cl.state, cl.cost_per_hour,
                     int(cl.simulated), cl.created_at or now, now))
            if mark_missing_gone:
                names = [cl.name for cl in clusters]
                q = "UPDATE clusters SET state='gone', updated_at=? WHERE state != 'gone'"
                if names:
                    q += f" AND name NOT IN ({','.join('?' * len(names))})"
                c.execute(q, (now, *names))

    def set_cluster_state(self, names: Iterable[str], state: str) -> None:
        now = time.time()
        with self.tx() as c:
            c.executemany("UPDATE clusters SET state=?, updated_at=? WHERE name=?",
                          [(state, now, n) for n in names])

    def clusters(self, include_gone: bool = False) -> list[Cluster]:
        q = "SELECT name, backend, gpu_type, gpu_count, state, cost_per_hour, simulated, created_at FROM clusters"
        if not include_gone:
            q += " WHERE state != 'gone'"
        rows = self._conn().execute(q + " ORDER BY name").fetchall()
        return [Cluster(name=r[0], backend=r[1], gpu_type=r[2], gpu_count=r[3], state=r[4],
                        cost_per_hour=r[5], simulated=bool(r[6]), created_at=r[7]) for r in rows]

    # -- experiments & waves ---------------------------------------------------------------------
    def insert_launch(self, experiments: list[Experiment], kinds: dict[str, str] | None = None,
                      wave: Wave | None = None) -> None:
        """Insert a wave (optional) and its experiments, status queued, in ONE transaction."""
        now = time.time()
        kinds = kinds or {}
        with self.tx() as c:
            if wave is not None:
                c.execute("INSERT INTO waves(seq, id, description, kind, design, created_at) VALUES(?,?,?,?,?,?)",
                          (id_seq(wave.id), wave.id, wave.description, wave.kind,
                           json.dumps(wave.design, sort_keys=True), wave.created_at or now))
            for e in experiments:
                c.execute(
                    f"""INSERT INTO experiments(seq, id, description, kind, wave_id, parent_id,
                        parent_commit, commit_sha, code_hash, parent_code_hash, harness_hash,
                        overrides, seed, gpu_type, priority, status, attempts, created_at)
                        VALUES({','.join('?' * 18)})""",
                    (id_seq(e.id), e.id, e.description, kinds.get(e.id, "single"), e.wave_id,
                     e.parent_id, e.parent_commit, e.commit, e.code_hash, e.parent_code_hash,
                     e.harness_hash, json.dumps(e.overrides, sort_keys=True), e.seed, e.gpu_type,
                     e.priority, Status.queued.value, 0, e.created_at or now))
                c.execute("INSERT INTO events(experiment_id, t, kind, detail) VALUES(?,?,?,?)",
                          (e.id, now, "queued", e.gpu_type or "any"))

    def get(self, exp_id: str) -> Experiment | None:
        row = self._conn().execute(f"SELECT {_EXP_SELECT} FROM experiments WHERE id=?", (exp_id,)).fetchone()
        return _row_to_experiment(row) if row else None

    def get_many(self, ids: list[str]) -> list[Experiment]:
        """The experiments with these ids, in the order given (unknown ids skipped)."""
        out: dict[str, Experiment] = {}
        conn = self._conn()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            rows = conn.execute(f"SELECT {_EXP_SELECT} FROM experiments WHERE id IN ({','.join('?' * len(chunk))})",
                                chunk).fetchall()
            for r in rows:
                e = _row_to_experiment(r)
                out[e.id] = e
        return [out[i] for i in ids if i in out]

    def statuses(self, ids: list[str]) -> dict[str, Status]:
        out: dict[str, Status] = {}
        conn = self._conn()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            for eid, st in conn.execute(
                    f"SELECT id, status FROM experiments WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                out[eid] = Status(st)
        return out

    def existing_ids(self, ids: list[str]) -> set[str]:
        return set(self.statuses(ids))

    def list(self, status: str | None = None, wave_id: str | None = None, offset: int = 0,
             limit: int = 50, statuses: Iterable[str] | None = None,
             ran_on_gpu: str | None = None) -> tuple[list[Experiment], int]:
        """A page of experiments in launch order, and the total that match."""
        where, args = [], []
        if status is not None:
            where.append("status=?")
            args.append(status)
        if statuses is not None:
            st = list(statuses)
            where.append(f"status IN ({','.join('?' * len(st))})")
            args.extend(st)
        if wave_id is not None:
            where.append("wave_id=?")
            args.append(wave_id)
        if ran_on_gpu is not None:
            where.append("ran_on_gpu=?")
            args.append(ran_on_gpu)
        w = (" WHERE " + " AND ".join(where)) if where else ""
        conn = self._conn()
        total = conn.execute(f"SELECT COUNT(*) FROM experiments{w}", args).fetchone()[0]
        rows = conn.execute(f"SELECT {_EXP_SELECT} FROM experiments{w} ORDER BY seq LIMIT ? OFFSET ?",
                            (*args, limit, offset)).fetchall()
        return [_row_to_experiment(r) for r in rows], total

    def all_experiments(self, statuses: Iterable[str] | None = None) -> list[Experiment]:
        q = f"SELECT {_EXP_SELECT} FROM experiments"
        args: list[Any] = []
        if statuses is not None:
            st = list(statuses)
            q += f" WHERE status IN ({','.join('?' * len(st))})"
            args = st
        return [_row_to_experiment(r) for r in self._conn().execute(q + " ORDER BY seq", args)]

    def queued(self) -> list[tuple[str, str | None, int]]:
        """(id, gpu_type, priority) of queued experiments in dispatch order."""
        return self._conn().execute(
            "SELECT id, gpu_type, priority FROM experiments WHERE status='queued' ORDER BY priority DESC, seq"
        ).fetchall()

    def count_by_status(self) -> dict[str, int]:
        return dict(self._conn().execute("SELECT status, COUNT(*) FROM experiments GROUP BY status").fetchall())

    def count_waiting_for_slot(self) -> int:
        """Running experiments queued ahead behind another job on their slot (not started yet)."""
        return self._conn().execute("SELECT COUNT(*) FROM experiments WHERE status='running' "
                                    "AND waiting_for_slot=1").fetchone()[0]

    def kind_of(self, exp_id: str) -> str | None:
        row = self._conn().execute("SELECT kind FROM experiments WHERE id=?", (exp_id,)).fetchone()
        return row[0] if row else None

    def get_wave(self, wave_id: str) -> Wave | None:
        conn = self._conn()
        row = conn.execute("SELECT id, description, kind, design, created_at FROM waves WHERE id=?",
                           (wave_id,)).fetchone()
        if not row:
            return None
        ids = [r[0] for r in conn.execute("SELECT id FROM experiments WHERE wave_id=? ORDER BY seq", (wave_id,))]
        return Wave(id=row[0], description=row[1], kind=row[2], design=json.loads(row[3]),
                    experiment_ids=ids, created_at=row[4])

    def waves(self) -> list[Wave]:
        ids = [r[0] for r in self._conn().execute("SELECT id FROM waves ORDER BY seq")]
        return [w for w in (self.get_wave(i) for i in ids) if w]

    # -- the life of an attempt ----------------------------------------------------------------
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
                            (attempt, cluster, gpu_type, start, str(Path(run_dir) / "run.log"), int(waiting),
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
        return [dict(zip(keys, r)) for r in rows]

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
                c.execute(f"UPDATE experiments SET {', '.join(f'{k}=?' for k in METRIC_FIELDS)} WHERE id=?",
                          (*[vals[k] for k in METRIC_FIELDS], exp_id))
            if started_at is not None and c.execute(   # when the runner really started (unless mark_started said)
                    "SELECT 1 FROM events WHERE experiment_id=? AND kind='started' AND detail=?",
                    (exp_id, f"attempt {attempt}")).fetchone() is None:
                c.execute("INSERT INTO events(experiment_id, t, kind, detail) VALUES(?,?,?,?)",
                          (exp_id, started_at, "started", f"attempt {attempt}"))
            kind = "cancelled" if status == Status.cancelled else ("timeout" if status == Status.timeout else "finished")
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
            new = Status.queued if attempt < max_attempts else Status.lost
            cur = c.execute(
                "UPDATE experiments SET status=?, handle=NULL, ended_at=?, error=?, log_path=COALESCE(?, log_path), "
                "waiting_for_slot=0 "
                "WHERE id=? AND attempts=? AND status='running'",
                (new.value, now if new == Status.lost else None,
                 f"attempt {attempt} lost: {reason}" if reason else f"attempt {attempt} lost", log_path,
                 exp_id, attempt))
            if cur.rowcount != 1:
                return None
            c.execute("UPDATE attempts SET outcome='lost', ended_at=?, busy_seconds=? WHERE experiment_id=? AND attempt=?",
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

    def set_decision(self, exp_id: str, decision: Decision, detail: str = "") -> bool:
        with self.tx() as c:
            cur = c.execute("UPDATE experiments SET decision=? WHERE id=? AND status='done'", (decision.value, exp_id))
            if cur.rowcount != 1:
                return False
            c.execute("INSERT INTO events(experiment_id, t, kind, detail) VALUES(?,?,?,?)",
                      (exp_id, time.time(), "kept" if decision == Decision.keep else "discarded", detail))
        return True

    def add_event(self, exp_id: str | None, kind: str, detail: str = "") -> None:
        with self.tx() as c:
            c.execute("INSERT INTO events(experiment_id, t, kind, detail) VALUES(?,?,?,?)",
                      (exp_id, time.time(), kind, detail))

    def events(self, exp_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        if exp_id is None:
            rows = self._conn().execute("SELECT experiment_id, t, kind, detail FROM events ORDER BY seq DESC LIMIT ?",
                                        (limit,)).fetchall()[::-1]
        else:
            rows = self._conn().execute("SELECT experiment_id, t, kind, detail FROM events WHERE experiment_id=? "
                                        "ORDER BY seq LIMIT ?", (exp_id, limit)).fetchall()
        return [dict(experiment_id=r[0], t=r[1], kind=r[2], detail=r[3]) for r in rows]

    def attempts(self, exp_id: str) -> list[dict[str, Any]]:
        keys = ["attempt", "cluster", "gpu_type", "run_dir", "submitted_at", "started_at", "ended_at", "busy_seconds",
                "outcome"]
        rows = self._conn().execute(f"SELECT {', '.join(keys)} FROM attempts WHERE experiment_id=? ORDER BY attempt",
                                    (exp_id,)).fetchall()
        return [dict(zip(keys, r)) for r in rows]

    # -- accounting ----------------------------------------------------------------------------
    def usage(self) -> dict[str, Any]:
        """GPU-hours and cost of every closed attempt (lost ones too: the slot was paid for),
        plus a running estimate for open attempts (from their real start: one queued ahead behind
        another job on its slot counts nothing until it starts)."""
        now = time.time()
        # One pass over the attempts table (this runs on every budget_status call and every
        # launch's limit check): per GPU type and open/closed, seconds x GPUs and their cost.
        rows = self._conn().execute(
            "SELECT gpu_type, outcome IS NULL, "
            "SUM(CASE WHEN outcome IS NULL THEN COALESCE(? - started_at, 0) ELSE busy_seconds END * gpu_count), "
            "SUM(CASE WHEN outcome IS NULL THEN COALESCE(? - started_at, 0) ELSE busy_seconds END "
            "    * COALESCE(cost_per_hour, 0) * gpu_count) / 3600.0, "
            "COUNT(*) FROM attempts GROUP BY gpu_type, outcome IS NULL", (now, now)).fetchall()
        out: dict[str, Any] = {"gpu_hours": 0.0, "cost_usd": 0.0, "attempts_closed": 0, "gpu_hours_in_flight": 0.0,
                               "cost_usd_in_flight": 0.0, "attempts_open": 0, "gpu_hours_by_type": {}}
        for gpu, is_open, seconds, cost, n in rows:
            seconds, cost = seconds or 0.0, cost or 0.0
            if is_open:
                out["gpu_hours_in_flight"] += seconds / 3600.0
                out["cost_usd_in_flight"] += cost
                out["attempts_open"] += n
            else:
                out["gpu_hours"] += seconds / 3600.0
                out["cost_usd"] += cost
                out["attempts_closed"] += n
                by_type = out["gpu_hours_by_type"]
                by_type[gpu or "?"] = by_type.get(gpu or "?", 0.0) + seconds / 3600.0
        return out

    def throughput_by_gpu(self) -> dict[str, dict[str, Any]]:
        """Measured throughput of done runs per GPU type (the type they actually ran on)."""
        rows = self._conn().execute(
            "SELECT ran_on_gpu, COUNT(*), AVG(num_steps), AVG(training_seconds), "
            "AVG(CASE WHEN training_seconds > 0 THEN total_tokens_M * 1e6 / training_seconds END), "
            "MIN(val_bpb), AVG(peak_vram_mb) FROM experiments WHERE status='done' GROUP BY ran_on_gpu").fetchall()
        return {r[0] or "?": {"runs": r[1], "mean_num_steps": r[2], "mean_training_seconds": r[3],
                              "mean_tokens_per_s": r[4], "best_val_bpb": r[5], "mean_peak_vram_mb": r[6]}
                for r in rows}

    # -- export ----------------------------------------------------------------------------------
    def tsv_rows(self) -> list[list[str]]:
        rows = self._conn().execute(
            "SELECT commit_sha, val_bpb, peak_vram_mb, status, decision, description, id, wave_id, ran_on_gpu, "
            "cluster, seed, num_steps FROM experiments WHERE status NOT IN ('queued', 'running') ORDER BY seq"
        ).fetchall()
        out = []
        for commit, bpb, vram, status, decision, desc, eid, wave, gpu, cluster, seed, steps in rows:
            ok = status == Status.done.value and bpb is not None
            out.append([
                (commit or "")[:7],
                f"{bpb:.6f}" if ok else "0.000000",
                f"{(vram or 0.0) / 1024:.1f}" if ok else "0.0",
                decision or status,
                _clean_tsv(desc),
                eid, wave or "", gpu or "", cluster or "", str(seed), "" if steps is None else str(steps),
                decision or "",
            ])
        return out

    def export_tsv(self, dest: str | os.PathLike[str]) -> Path:
        """Write results.tsv (header + one row per finished experiment) atomically to `dest`."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write("\t".join(TSV_COLUMNS) + "\n")
            for r in self.tsv_rows():
                f.write("\t".join(r) + "\n")
        os.replace(tmp, dest)
        return dest

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


__all__ = ["Ledger", "LedgerError", "MIGRATIONS", "SCHEMA_VERSION", "TSV_COLUMNS", "TERMINAL"]
