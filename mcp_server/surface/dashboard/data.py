"""What the dashboard shows, read from the ledger and nothing else (`DashboardData`).

Read-only by construction: it calls only the ledger's read methods and `git diff` between two
experiment commits; it never writes. Two ways to follow the ledger:

* inside the server (`serve --transport http`): the engine's `ExperimentCache`, which the ledger's
  change hook keeps current;
* standalone (`autoresearch-fleet dashboard`, while a server runs elsewhere on the workspace): its
  own cache over its own `Ledger` connection. Every write that changes an experiment also appends
  to the event log, so each request compares the last event's sequence number with the one it has
  seen and re-reads only the experiments named by the new events. It takes no workspace lock.

Every answer is a plain dict (JSON) cached until the ledger moves (the last event seq, and the
clusters' last update), so repeated polls of an idle ledger cost one indexed query.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp_server.domain import analysis, wave_analysis
from mcp_server.domain.errors import InvalidInput, NotFound
from mcp_server.domain.metric import DEFAULT_METRIC, Metric
from mcp_server.domain.models import FAILED, LIVE, Decision, Experiment, Metrics, Status
from mcp_server.engine.experiment_cache import ExperimentCache
from mcp_server.store.ledger import Ledger

log = logging.getLogger("autoresearch.dashboard")
_SHA = re.compile(r"^[0-9a-f]{7,64}$")
_ID = re.compile(r"^[a-z]\d{1,9}$")
#: the note every per-GPU-type section carries
NOT_COMPARABLE = ("Results are ranked and charted per GPU type only: the time budget is fixed, so a faster GPU fits "
                  "more steps; a result on one type is never compared with one on another.")
SORT_KEYS = ("seq", "id", "status", "gpu", "value", "seed", "wave", "decision", "steps")


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _value_fn(metric: Metric) -> Callable[[Experiment], float | None]:
    """`metric.value`, without its generality when the metric is a declared field of `Metrics`
    (the same answer: a finite number of a done run, else None), for loops over every experiment."""
    if metric.name not in Metrics.model_fields:
        return metric.value
    name, done = metric.name, Status.done

    def value(e: Experiment) -> float | None:
        if e.status is not done:
            return None
        v = e.metrics.__dict__.get(name)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None
    return value


class DashboardData:
    """The dashboard's answers over one ledger. Thread-safe."""

    def __init__(self, ledger: Ledger, workspace: Path, *, cache: ExperimentCache | None = None,
                 metric: Metric = DEFAULT_METRIC, gpu_hour_budget: float | None = None,
                 max_concurrent: int | None = None, notes: Callable[[], list[str]] | None = None) -> None:
        self.ledger = ledger
        self.workspace = Path(workspace)
        self.metric = metric
        self.gpu_hour_budget = gpu_hour_budget
        self.max_concurrent = max_concurrent
        self._notes = notes
        self._follow_events = cache is None      # standalone: no change hook from the writer's process
        self.cache = cache if cache is not None else ExperimentCache(ledger, metric)
        self._lock = threading.Lock()
        self._seen_event = -1
        self._memo: dict[Any, tuple[Any, Any]] = {}
        self._building: set[Any] = set()
        self._wanted: dict[Any, Any] = {}       # the newest token asked of a key while it was being rebuilt

    # -- following the ledger ----------------------------------------------------------------------
    def _token(self) -> tuple[int, float, int]:
        """(last event seq, last cluster update, the cache's change count): moves whenever anything
        shown may have changed. The count is there because the answers are built from the cache, and
        the writer refreshes it just after its COMMIT: a request between the two reads the new seq
        with the old cache, and its answer, stored under that seq, would otherwise stay until the
        next change."""
        conn = self.ledger._conn()
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        upd = conn.execute("SELECT COALESCE(MAX(updated_at), 0) FROM clusters").fetchone()[0]
        if self._follow_events:
            with self._lock:
                if self._seen_event < 0:
                    self.cache.all()                  # first load: everything
                elif seq > self._seen_event:
                    ids = [r[0] for r in conn.execute(
                        "SELECT DISTINCT experiment_id FROM events WHERE seq > ? AND experiment_id IS NOT NULL",
                        (self._seen_event,))]
                    self.cache.refresh(ids)
                self._seen_event = seq
        return seq, upd, self.cache.changes

    def _memoised(self, key: Any, token: Any, build: Callable[[], Any]) -> Any:
        """The answer for `key` at `token`. When the ledger has moved since the last answer, that
        answer is served while a background thread computes the new one (stale by one recompute,
        a fraction of a second at 10,000 experiments), so a poll never waits for a recompute; the
        first answer for a key is computed in the request."""
        hit = self._memo.get(key)
        if hit is not None and hit[0] == token:
            return hit[1]
        if hit is not None:
            self._rebuild(key, token, build)
            return hit[1]
        value = build()
        self._store(key, token, value)
        return value

    def _store(self, key: Any, token: Any, value: Any) -> None:
        if len(self._memo) > 256:
            self._memo.clear()
        self._memo[key] = (token, value)

    def _rebuild(self, key: Any, token: Any, build: Callable[[], Any]) -> None:
        """Recompute `key` in the background, until its answer is for the newest token asked of it
        (a request that arrives during a rebuild asks for one more, never for none)."""
        with self._lock:
            self._wanted[key] = token
            if key in self._building:
                return
            self._building.add(key)

        def run() -> None:
            try:
                while True:
                    with self._lock:
                        want = self._wanted[key]
                    self._store(key, want, build())
                    with self._lock:            # the check and the hand-back in one step: no request between
                        if self._wanted[key] == want:
                            self._building.discard(key)
                            del self._wanted[key]
                            return
            except Exception:  # noqa: BLE001 - the next request computes it in the request and says why
                log.exception("dashboard: recomputing %r failed", key)
                self._memo.pop(key, None)
                with self._lock:
                    self._building.discard(key)
                    self._wanted.pop(key, None)
        threading.Thread(target=run, name="dashboard-rebuild", daemon=True).start()

    def version(self) -> dict[str, Any]:
        """The ledger's position; `settled` is False while answers are being recomputed after a change
        (the page polls again until it is True)."""
        seq, upd, changes = self._token()
        with self._lock:
            settled = not self._building
        return {"version": f"{seq}:{upd}:{changes}", "settled": settled}

    # -- overview -----------------------------------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        token = self._token()
        # in-flight GPU-hours grow with time: recompute at most every 2 s while nothing else moves
        return self._memoised("overview", (token, int(time.time() // 2)), self._overview)

    def _overview(self) -> dict[str, Any]:
        ledger = self.ledger
        usage = ledger.usage()
        counts = ledger.count_by_status()
        running, _ = ledger.list_experiments(status=Status.running.value, limit=1000)
        by_cluster: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in running:
            by_cluster[e.cluster or "?"].append({"id": e.id, "description": e.description,
                                                 "waiting_for_slot": e.waiting_for_slot})
        clusters = [{"name": c.name, "gpu_type": c.gpu_type, "gpu_count": c.gpu_count, "state": c.state,
                     "backend": c.backend, "simulated": c.simulated, "cost_per_hour": c.cost_per_hour,
                     "running": by_cluster.get(c.name, [])} for c in ledger.clusters()]
        board = self.cache.leaderboard(None, 1)
        best = []
        for gpu, rows in board.by_gpu_type.items():
            if rows:
                r = rows[0]
                best.append({"gpu_type": gpu, "experiment_id": r.experiment_id, "description": r.description,
                             "value": r.val_bpb, "seeds": r.seeds, "std": r.std,
                             "noise_floor": board.noise_floor.get(gpu), "verdict": r.verdict,
                             "decision": r.decision})
        exps = self.cache.all()
        kept = sorted((e for e in exps if e.decision == Decision.keep), key=lambda e: (e.created_at, e.id))
        chain = [{"id": e.id, "description": e.description, "gpu_type": e.ran_on_gpu,
                  "value": self.metric.raw(e), "commit": e.commit} for e in kept]
        live = {s.value for s in LIVE}
        failed = {s.value for s in FAILED}
        gpu_hours = usage["gpu_hours"] + usage["gpu_hours_in_flight"]
        return {
            "workspace": str(self.workspace), "tag": ledger.get_meta("tag"), "profile": ledger.get_meta("profile"),
            "backend": ledger.get_meta("backend"), "metric": self.metric.model_dump(),
            "gpu_hours": gpu_hours, "gpu_hours_in_flight": usage["gpu_hours_in_flight"],
            "cost_usd": usage["cost_usd"] + usage["cost_usd_in_flight"], "gpu_hour_budget": self.gpu_hour_budget,
            "gpu_hours_left": None if self.gpu_hour_budget is None else max(0.0, self.gpu_hour_budget - gpu_hours),
            "max_concurrent": self.max_concurrent,
            "counts": {"queued": counts.get(Status.queued.value, 0), "running": counts.get(Status.running.value, 0),
                       "done": counts.get(Status.done.value, 0),
                       "failed": sum(n for s, n in counts.items() if s in failed),
                       "cancelled": counts.get(Status.cancelled.value, 0),
                       "total": sum(counts.values()),
                       "other": sum(n for s, n in counts.items()
                                    if s not in live and s not in failed and s not in ("done", "cancelled"))},
            "by_status": counts, "clusters": clusters, "best": best, "kept_chain": chain,
            "notes": [NOT_COMPARABLE, *board.notes[:1]] + (self._notes() if self._notes else []),
            "generated_at": time.time(),
        }

    # -- experiments table ----------------------------------------------------------------------------
    def experiments(self, status: str | None = None, wave: str | None = None, gpu: str | None = None,
                    sort: str = "seq", order: str = "asc", offset: int = 0, limit: int = 100) -> dict[str, Any]:
        if status is not None and status not in {s.value for s in Status} | {"failed"}:
            raise InvalidInput(f"status must be one of {', '.join(s.value for s in Status)} or failed, got {status!r}.")
        if sort not in SORT_KEYS:
            raise InvalidInput(f"sort must be one of {', '.join(SORT_KEYS)}, got {sort!r}.")
        if order not in ("asc", "desc"):
            raise InvalidInput(f"order must be asc or desc, got {order!r}.")
        if not 0 <= offset <= 10**9 or not 1 <= limit <= 1000:
            raise InvalidInput("offset must be >= 0 and limit from 1 to 1000.")
        token = self._token()
        ordered = self._memoised(("rows", status, wave, gpu, sort, order), token,
                                 lambda: self._select(status, wave, gpu, sort, order))
        page = ordered[offset:offset + limit]
        with self.cache.indexed() as idx:       # verdicts for the page only: O(page), not O(ledger)
            verdicts = {v.experiment_id: v for v in idx.verdicts([e for e in page if e.status == Status.done])}
        return {"total": len(ordered), "offset": offset, "rows": [self._row(e, verdicts.get(e.id)) for e in page],
                "metric": self.metric.model_dump()}

    def _select(self, status: str | None, wave: str | None, gpu: str | None, sort: str, order: str) -> list[Experiment]:
        failed = {s.value for s in FAILED}
        sel = [e for e in self.cache.all()
               if (status is None or e.status.value == status or (status == "failed" and e.status.value in failed))
               and (wave is None or e.wave_id == wave)
               and (gpu is None or (e.ran_on_gpu or e.gpu_type or "any") == gpu)]
        value = _value_fn(self.metric)
        sign = 1.0 if self.metric.lower_is_better else -1.0

        def seq(e: Experiment) -> tuple[float, str]:
            return (e.created_at, e.id)

        def value_key(e: Experiment) -> tuple[Any, ...]:
            v = value(e)             # best first (whatever the metric's direction); runs without a value last
            return (v is None, sign * v if v is not None else 0.0, e.created_at, e.id)

        keyf: dict[str, Callable[[Experiment], Any]] = {
            "seq": seq, "id": seq, "status": lambda e: (e.status.value, seq(e)),
            "gpu": lambda e: (e.ran_on_gpu or e.gpu_type or "", seq(e)), "seed": lambda e: (e.seed, seq(e)),
            "wave": lambda e: (e.wave_id or "", seq(e)),
            "decision": lambda e: (e.decision.value if e.decision else "", seq(e)),
            "steps": lambda e: (e.metrics.num_steps is None, e.metrics.num_steps or 0, seq(e)),
            "value": value_key,
        }
        sel.sort(key=keyf[sort], reverse=(order == "desc"))
        return sel

    def _row(self, e: Experiment, v: analysis.Verdict | None) -> dict[str, Any]:
        digits = "".join(ch for ch in e.id if ch.isdigit())
        return {"seq": int(digits) if digits else 0, "id": e.id, "description": e.description, "status": e.status.value,
                "gpu": e.ran_on_gpu or e.gpu_type, "ran_on_gpu": e.ran_on_gpu, "cluster": e.cluster, "seed": e.seed,
                "wave": e.wave_id, "decision": e.decision.value if e.decision else None,
                "value": self.metric.raw(e) if e.status == Status.done else None, "steps": e.metrics.num_steps,
                "verdict": v.verdict if v else ("pending" if e.status in LIVE else None),
                "delta": v.delta if v else None, "overrides": e.overrides,
                "waiting_for_slot": e.waiting_for_slot}

    # -- leaderboard ------------------------------------------------------------------------------------
    def leaderboard(self, gpu: str | None = None, limit: int = 50) -> dict[str, Any]:
        token = self._token()
        board = self._memoised(("board", gpu, limit), token, lambda: self.cache.leaderboard(gpu, limit))
        return {"by_gpu_type": {k: [r.model_dump() for r in rows] for k, rows in board.by_gpu_type.items()},
                "noise_floor": board.noise_floor, "reference": board.reference,
                "notes": [NOT_COMPARABLE, *board.notes], "metric": self.metric.model_dump()}

    # -- progress chart data ------------------------------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        token = self._token()
        return self._memoised("progress", token, self._progress)

    def _progress(self) -> dict[str, Any]:
        """Per GPU type: each finished run (launch order, value, kept), and the running best of the
        group means (identical code on that type, averaged over its seeds) as runs finish."""
        metric = self.metric
        value = _value_fn(metric)
        sign = 1.0 if metric.lower_is_better else -1.0       # compare sign * value: lower is better
        exps = sorted(self.cache.all(), key=lambda e: (e.created_at, e.id))
        out: dict[str, Any] = {}
        groups: dict[str, dict[str, list[float]]] = {}
        best: dict[str, tuple[float, str]] = {}          # GPU type -> (sign * best group mean, its code)
        keep = Decision.keep
        for x, e in enumerate(exps, start=1):
            v = value(e)
            if v is None:
                continue
            gpu = e.ran_on_gpu or analysis.UNKNOWN_GPU
            s = out.get(gpu)
            if s is None:
                s = out[gpu] = {"x": [], "y": [], "kept": [], "best_x": [], "best_y": []}
                groups[gpu] = {}
            s["x"].append(x)
            s["y"].append(round(v, 6))
            if e.decision == keep:
                s["kept"].append(len(s["x"]) - 1)
            sums = groups[gpu]
            code = e.code_hash or e.id
            g = sums.get(code)
            if g is None:
                g = sums[code] = [0.0, 0]
            g[0] += v
            g[1] += 1
            key = sign * g[0] / g[1]
            cur = best.get(gpu)
            if cur is None or key < cur[0]:
                best[gpu] = (key, code)
            elif cur[1] == code:           # the best group itself moved (it got worse): look at them all
                best[gpu] = min((sign * t / k, c) for c, (t, k) in sums.items())
            b = sign * best[gpu][0]
            if not s["best_y"] or s["best_y"][-1] != b:
                s["best_x"].append(x)
                s["best_y"].append(b)
        for s in out.values():
            s["best_x"].append(len(exps))
            s["best_y"].append(s["best_y"][-1])
        return {"by_gpu_type": out, "n": len(exps), "metric": metric.model_dump(), "note": NOT_COMPARABLE}

    # -- waves ------------------------------------------------------------------------------------------
    def waves(self) -> dict[str, Any]:
        token = self._token()
        return self._memoised("waves", token, self._waves)

    def _waves(self) -> dict[str, Any]:
        by_wave: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for e in self.cache.all():
            if e.wave_id is not None:
                by_wave[e.wave_id][e.status.value] += 1
        rows = self.ledger._conn().execute(
            "SELECT id, description, kind, design, created_at FROM waves ORDER BY seq").fetchall()
        out = []
        for wid, description, kind, design, created_at in rows:
            st = by_wave.get(wid, {})
            out.append({"id": wid, "description": description, "kind": kind, "design": json.loads(design),
                        "n": sum(st.values()), "by_status": dict(st), "created_at": created_at})
        return {"waves": out}

    def wave(self, wave_id: str) -> dict[str, Any]:
        w = self.ledger.get_wave(wave_id) if isinstance(wave_id, str) and len(wave_id) < 32 else None
        if w is None:
            raise NotFound(f"No wave {str(wave_id)[:32]!r}; the waves list names them all.")
        token = self._token()
        return self._memoised(("wave", wave_id), token, lambda: self._wave(w))

    def _wave(self, w: Any) -> dict[str, Any]:
        """The wave's design, its runs, and its cells (one per set of overrides, per GPU type) with the
        mean over their seeds. A factorial wave's main effects come from the research-memory analysis
        (`domain.wave_analysis`) when it is present."""
        metric = self.metric
        members = self.cache.ledger.get_many(w.experiment_ids)
        with self.cache.indexed() as idx:
            verdicts = {v.experiment_id: v for v in idx.verdicts([e for e in members if e.status == Status.done])}
        cells: dict[tuple[str, str], dict[str, Any]] = {}
        for e in members:
            key = (analysis.gpu_of(e) if e.status == Status.done else (e.gpu_type or "any"),
                   repr(sorted(e.overrides.items())))
            c = cells.setdefault(key, {"gpu_type": key[0], "overrides": e.overrides, "values": [], "ids": [],
                                       "live": 0, "failed": 0})
            c["ids"].append(e.id)
            v = metric.value(e)
            if v is not None:
                c["values"].append(v)
            elif e.status in LIVE:
                c["live"] += 1
            elif e.status in FAILED:
                c["failed"] += 1
        table = []
        for c in cells.values():
            vals = c.pop("values")
            c["n"] = len(vals)
            c["mean"] = math.fsum(vals) / len(vals) if vals else None
            c["std"] = (math.sqrt(math.fsum((x - c["mean"]) ** 2 for x in vals) / (len(vals) - 1))
                        if len(vals) >= 2 else None)
            table.append(c)
        table.sort(key=lambda c: (c["gpu_type"], c["mean"] is None,
                                  metric.sort_key(c["mean"]) if c["mean"] is not None else 0))
        return {"id": w.id, "description": w.description, "kind": w.kind, "design": w.design,
                "cells": table, "experiments": [self._row(e, verdicts.get(e.id)) for e in members],
                "main_effects": main_effects(w, members, metric, self.cache.all()), "metric": metric.model_dump(),
                "note": NOT_COMPARABLE}

    # -- one experiment ---------------------------------------------------------------------------------
    def _experiment(self, exp_id: str) -> Experiment:
        e = self.ledger.get(exp_id) if isinstance(exp_id, str) and _ID.match(exp_id) else None
        if e is None:
            raise NotFound(f"No experiment {str(exp_id)[:32]!r}: ids look like e0001 (see the experiments table).")
        return e

    def experiment(self, exp_id: str) -> dict[str, Any]:
        e = self._experiment(exp_id)
        with self.cache.indexed() as idx:
            verdict = idx.verdicts([e])[0] if e.status == Status.done else None
        return {
            "experiment": e.model_dump(mode="json"), "value": self.metric.raw(e), "metric": self.metric.model_dump(),
            "verdict": verdict.model_dump() if verdict else None,
            "attempts": self.ledger.attempts(e.id), "events": self.ledger.events(e.id, 500),
            "diff": self.diff(e), "log_chars": self._log_size(e),
        }

    def diff(self, e: Experiment) -> dict[str, Any]:
        """The code change against the parent: the overrides when that is all it is, and the git diff
        between the parent commit and the experiment's snapshot (both commit ids from the ledger)."""
        out: dict[str, Any] = {"overrides": e.overrides, "parent_id": e.parent_id, "parent_commit": e.parent_commit,
                               "commit": e.commit, "text": None}
        if e.commit and e.parent_commit and _SHA.match(e.commit) and _SHA.match(e.parent_commit):
            try:
                import git

                repo = git.Repo(self.workspace)
                try:
                    text = repo.git.diff(e.parent_commit, e.commit, "--", ":(exclude).gitignore")
                finally:
                    repo.close()
                out["text"] = text[:200_000]
            except Exception as exc:  # noqa: BLE001 - a pruned or foreign commit: say so, show the rest
                out["error"] = f"no diff: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
        return out

    @staticmethod
    def _log_text(e: Experiment) -> str:
        if not e.log_path:
            return ""
        try:
            with open(e.log_path, "rb") as f:
                return f.read(64 << 20).decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _log_size(self, e: Experiment) -> int:
        return len(self._log_text(e))

    def log(self, exp_id: str, offset: int = -8000, limit: int = 8000) -> dict[str, Any]:
        """A page of the log: `limit` characters from `offset` (negative: from the end)."""
        e = self._experiment(exp_id)
        if not 1 <= limit <= 200_000 or abs(offset) > 10**12:
            raise InvalidInput("limit must be from 1 to 200000, offset an integer (negative = from the end).")
        text = self._log_text(e)
        start = max(0, len(text) + offset) if offset < 0 else min(offset, len(text))
        end = min(len(text), start + limit)
        return {"id": e.id, "text": text[start:end], "start": start, "end": end, "size": len(text),
                "status": e.status.value}


def main_effects(wave: Any, members: list[Experiment], metric: Metric,
                 everything: list[Experiment]) -> dict[str, Any] | None:
    """A factorial wave's main effects, interactions and cells vs control, from the research-memory
    analysis (`domain.wave_analysis`, the same statistics as the analyze_wave tool; effects are taken
    against each axis's first level here, as the page does not read the base code's constants).
    None for any other kind of wave. The analysis owns the statistics; the dashboard only shows them."""
    if wave.kind != "factorial":
        return None
    try:
        result = wave_analysis.analyze_wave(wave, members, metric, wave_analysis.pooled_noise(everything, metric))
    except InvalidInput as exc:          # a wave without axes: the page says why
        return {"error": str(exc)}
    return result.model_dump(mode="json")
