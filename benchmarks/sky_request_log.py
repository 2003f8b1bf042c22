"""Count what a REAL SkyPilot API server was asked, from its own request table: requests by kind,
per experiment, their latency (created -> finished) and the peak in flight -- the figures
benchmarks/skypilot_scale.py reports for the stand-in, to compare the two (issue 15: within +-1
request per experiment).

    python benchmarks/sky_request_log.py [--db ~/.sky/api_server/requests.db] [--since EPOCH]
                                         [--until EPOCH] [--cluster-prefix arf-] [--json out.json]

Run it on the machine of the API server after a run of the fleet (e.g. a few experiments on the
local Slurm: `sudo scripts/local-slurm.sh up`, then an engine session on 2 clusters), with
--since/--until around that run. It opens the database read-only and changes nothing.

What it cannot see: `api_status` (GET /api/status reads the request table, it makes no request
row) and `sky.get`/`stream_and_get` (waits on a request): compare those with the backend's own
view. The table's columns differ between SkyPilot versions; the ones used here are looked up
(name, status, created_at, finished_at, cluster_name, schedule_type) and the missing ones said.
A `status` served from the long queue is counted as `status_refresh` (a status with a refresh);
the server's own daemons' requests (status-refresh, server-heartbeat, ...) are not a client's and
are listed apart. Checked against SkyPilot 0.14.1's local API server.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

DEFAULT_DB = Path("~/.sky/api_server/requests.db")
TABLE = "requests"
# request names (sky/server/server.py, "sky." stripped) and what the stand-in calls them; a
# `status` served from the long queue is one with a refresh (sky/server/requests/executor.py)
KIND = {"exec": "exec", "queue": "queue", "logs": "logs", "status": "status", "cancel": "cancel",
        "launch": "launch", "down": "down", "autostop": "autostop", "job_status": "job_status",
        "start": "start", "stop": "stop"}
# requests the API server makes for itself (its daemons), not a client's
INTERNAL = {"status-refresh", "volume-refresh", "server-heartbeat", "expired-token-cleanup",
            "managed-job-status-refresh", "sky-serve-status-refresh", "pool-status-refresh"}
OPTIONAL = ("status", "finished_at", "cluster_name", "schedule_type", "return_value")


def _columns(conn: sqlite3.Connection) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({TABLE})")}


def _pct(xs: list[float], q: float) -> float | None:
    return sorted(xs)[int(q * (len(xs) - 1))] if xs else None


def _job_id(return_value: object) -> int | None:
    """The job id an exec request returned (its return_value is JSON with `job_id`)."""
    try:
        v = json.loads(str(return_value)).get("job_id")
    except (ValueError, AttributeError):
        return None
    return int(v) if isinstance(v, int) else None


def kind_of(name: str, schedule_type: object) -> str:
    k = KIND.get(name, name)
    return "status_refresh" if k == "status" and schedule_type == "long" else k


def rows(db: Path, since: float, until: float, cluster_prefix: str | None) -> list[dict[str, Any]]:
    """The requests created in [since, until], each with its kind (internal ones included)."""
    if not db.is_file():
        raise SystemExit(f"no request database at {db}: pass --db (the API server's ~/.sky/api_server/requests.db)")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        cols = _columns(conn)
        if not cols:
            raise SystemExit(f"{db} has no table {TABLE!r}: is this SkyPilot's request database?")
        missing = [c for c in ("name", "created_at") if c not in cols]
        if missing:
            raise SystemExit(f"the {TABLE} table has no column(s) {missing}; its columns: {sorted(cols)}")
        opt = [c for c in OPTIONAL if c in cols]
        found = conn.execute(f"SELECT name, created_at, {', '.join(opt) or 'NULL'} FROM {TABLE} "
                             "WHERE created_at >= ? AND created_at <= ? ORDER BY created_at",
                             (since, until)).fetchall()
    finally:
        conn.close()
    out = []
    for row in found:
        r: dict[str, Any] = {"name": str(row[0]).split(".", 1)[-1], "created_at": float(row[1])}
        r.update(dict(zip(opt, row[2:], strict=False)))
        if cluster_prefix and r.get("cluster_name") and not str(r["cluster_name"]).startswith(cluster_prefix):
            continue
        r["kind"] = kind_of(r["name"], r.get("schedule_type"))
        ret = r.pop("return_value", None)       # large for some kinds (a status's records): not kept
        r["job_id"] = _job_id(ret) if r["kind"] == "exec" else None
        r["internal"] = r["name"] in INTERNAL
        out.append(r)
    return out


def read(db: Path, since: float, until: float, cluster_prefix: str | None) -> dict:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True) if db.is_file() else None
    cols = _columns(conn) if conn else set()
    if conn:
        conn.close()
    everything = rows(db, since, until, cluster_prefix)
    reqs = [r for r in everything if not r["internal"]]
    by_kind = Counter(r["kind"] for r in reqs)
    execs = by_kind.get("exec", 0)
    lat: dict[str, list[float]] = {}
    events = []
    for r in reqs:
        fin = r.get("finished_at")
        if isinstance(fin, (int, float)) and fin >= r["created_at"]:
            lat.setdefault(r["kind"], []).append(fin - r["created_at"])
            events += [(r["created_at"], 1), (float(fin), -1)]
    peak = cur = 0
    for _, d in sorted(events):
        cur += d
        peak = max(peak, cur)
    return {
        "db": str(db), "window": [since, until], "columns_missing": [c for c in OPTIONAL if c not in cols],
        "requests": len(reqs), "by_kind": dict(sorted(by_kind.items())),
        "internal_not_counted": dict(Counter(r["name"] for r in everything if r["internal"])),
        "experiments (exec requests)": execs,
        "per_experiment": {k: round(v / execs, 2) for k, v in sorted(by_kind.items())} if execs else None,
        "per_experiment_total": round(len(reqs) / execs, 2) if execs else None,
        "latency_s": {k: {"p50": _pct(v, 0.5), "p95": _pct(v, 0.95), "mean": statistics.mean(v),
                          "min": min(v), "max": max(v), "all": [round(x, 3) for x in v]}
                      for k, v in sorted(lat.items())},
        "peak_in_flight": peak if events else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, default=DEFAULT_DB)
    ap.add_argument("--since", type=float, default=0.0, help="epoch seconds (default: all)")
    ap.add_argument("--until", type=float, default=float("inf"))
    ap.add_argument("--cluster-prefix", default=None,
                    help="count only requests about clusters whose name starts so (and ones without a cluster)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    fig = read(args.db.expanduser(), args.since, args.until, args.cluster_prefix)
    print(json.dumps(fig, indent=2))
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
