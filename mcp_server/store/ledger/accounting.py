"""The ledger's accounting (`AccountingMixin`): GPU-hours, cost and measured throughput.

Rules: read-only, one aggregate query each (they run on every budget_status call and every
launch's limit check). Closed attempts count their busy seconds (lost ones too: the slot was paid
for); open ones count from their real start (a job queued ahead on its slot counts nothing until
it starts). Throughput is per GPU type the runs actually ran on (`ran_on_gpu`).
"""

from __future__ import annotations

import time
from typing import Any

from mcp_server.store.ledger.connection import LedgerBase


class AccountingMixin(LedgerBase):
    """usage() and throughput_by_gpu()."""

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


__all__ = ["AccountingMixin"]
