"""The ledger's records (`RecordsMixin`): session meta, ids, clusters, experiments and waves,
decisions and the event log.

Rules: every write is one `tx()` (so the change hook announces the experiments it touched);
experiments are read with `schema.EXP_SELECT` and mapped with `schema.row_to_experiment`; lists
come in launch order (`seq`). State transitions of an attempt live in `attempts`, not here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from mcp_server.domain.ids import id_seq
from mcp_server.domain.models import Cluster, Decision, Experiment, Status, Wave
from mcp_server.store.ledger.connection import LedgerBase
from mcp_server.store.ledger.schema import EXP_SELECT, row_to_experiment


class RecordsMixin(LedgerBase):
    """Meta, clusters, experiments, waves, decisions, events."""

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
                        overrides, seed, gpu_type, priority, status, attempts, created_at, hypothesis,
                        time_budget_s)
                        VALUES({','.join('?' * 20)})""",
                    (id_seq(e.id), e.id, e.description, kinds.get(e.id, "single"), e.wave_id,
                     e.parent_id, e.parent_commit, e.commit, e.code_hash, e.parent_code_hash,
                     e.harness_hash, json.dumps(e.overrides, sort_keys=True), e.seed, e.gpu_type,
                     e.priority, Status.queued.value, 0, e.created_at or now, e.hypothesis, e.time_budget_s))
                c.execute("INSERT INTO events(experiment_id, t, kind, detail) VALUES(?,?,?,?)",
                          (e.id, now, "queued", e.gpu_type or "any"))

    def get(self, exp_id: str) -> Experiment | None:
        row = self._conn().execute(f"SELECT {EXP_SELECT} FROM experiments WHERE id=?", (exp_id,)).fetchone()
        return row_to_experiment(row) if row else None

    def get_many(self, ids: list[str]) -> list[Experiment]:
        """The experiments with these ids, in the order given (unknown ids skipped)."""
        out: dict[str, Experiment] = {}
        conn = self._conn()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            rows = conn.execute(f"SELECT {EXP_SELECT} FROM experiments WHERE id IN ({','.join('?' * len(chunk))})",
                                chunk).fetchall()
            for r in rows:
                e = row_to_experiment(r)
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

    def list_experiments(self, status: str | None = None, wave_id: str | None = None, offset: int = 0,
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
        rows = conn.execute(f"SELECT {EXP_SELECT} FROM experiments{w} ORDER BY seq LIMIT ? OFFSET ?",
                            (*args, limit, offset)).fetchall()
        return [row_to_experiment(r) for r in rows], total

    def all_experiments(self, statuses: Iterable[str] | None = None) -> list[Experiment]:
        q = f"SELECT {EXP_SELECT} FROM experiments"
        args: list[Any] = []
        if statuses is not None:
            st = list(statuses)
            q += f" WHERE status IN ({','.join('?' * len(st))})"
            args = st
        return [row_to_experiment(r) for r in self._conn().execute(q + " ORDER BY seq", args)]

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

    # -- decisions & events ----------------------------------------------------------------------
    def set_decision(self, exp_id: str, decision: Decision, detail: str = "", reason: str | None = None) -> bool:
        """Record a keep/discard (and the agent's reason: None clears an earlier one) for a done experiment."""
        with self.tx() as c:
            cur = c.execute("UPDATE experiments SET decision=?, reason=? WHERE id=? AND status='done'",
                            (decision.value, reason, exp_id))
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


__all__ = ["RecordsMixin"]
