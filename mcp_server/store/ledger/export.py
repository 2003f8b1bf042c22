"""The `results.tsv` export (`ExportMixin`, TSV_COLUMNS).

The columns of karpathy/autoresearch's file (commit, val_bpb, memory_gb, status, description)
followed by id, wave, gpu, cluster, seed, steps, decision, and the agent's hypothesis (launch) and
reason (keep/discard). Rules: one row per experiment that is no
longer live, in launch order; a field never holds a tab or newline; the file is replaced
atomically (written beside it, then renamed).
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Any

from mcp_server.domain.models import Status
from mcp_server.store.ledger.connection import LedgerBase
from mcp_server.store.ledger.schema import METRIC_FIELDS

TSV_COLUMNS = ["commit", "val_bpb", "memory_gb", "status", "description",
               "id", "wave", "gpu", "cluster", "seed", "steps", "decision", "hypothesis", "reason"]


def tsv_columns(metric: str = "val_bpb") -> list[str]:
    """The header: karpathy's five columns (the metric's own name second), then ours."""
    return [TSV_COLUMNS[0], metric, *TSV_COLUMNS[2:]]


def _clean_tsv(text: Any) -> str:
    return " ".join(str(text).split())


class ExportMixin(LedgerBase):
    """tsv_rows() and export_tsv()."""

    def tsv_rows(self, metric: str = "val_bpb") -> list[list[str]]:
        """One row per experiment that is no longer live; the second column is `metric` (the task's)."""
        column = metric if metric in METRIC_FIELDS else "val_bpb"
        rows = self._conn().execute(
            f"SELECT commit_sha, {column}, peak_vram_mb, status, decision, description, id, wave_id, ran_on_gpu, "
            "cluster, seed, num_steps, metrics_extra, imported, hypothesis, reason FROM experiments "
            "WHERE status NOT IN ('queued', 'running') ORDER BY seq"
        ).fetchall()
        out = []
        for (commit, bpb, vram, status, decision, desc, eid, wave, gpu, cluster, seed, steps, extra, imported,
             hyp, why) in rows:
            if metric != column:
                bpb = json.loads(extra).get(metric) if extra else None
            if isinstance(bpb, bool) or not isinstance(bpb, (int, float)) or not math.isfinite(bpb):
                bpb = None
            ok = status == Status.done.value and bpb is not None
            out.append([
                (commit or "")[:7],
                f"{bpb:.6f}" if ok else "0.000000",
                f"{(vram or 0.0) / 1024:.1f}" if ok else "0.0",
                decision or status,
                _clean_tsv(desc),
                eid, wave or "", gpu or "", cluster or "", "" if imported else str(seed),
                "" if steps is None else str(steps),
                decision or "", _clean_tsv(hyp or ""), _clean_tsv(why or ""),
            ])
        return out

    def export_tsv(self, dest: str | os.PathLike[str], metric: str = "val_bpb") -> Path:
        """Write results.tsv (header + one row per finished experiment) atomically to `dest`; the
        second column is named after and holds `metric` (the task's)."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write("\t".join(tsv_columns(metric)) + "\n")
            for r in self.tsv_rows(metric):
                f.write("\t".join(r) + "\n")
        os.replace(tmp, dest)
        return dest


__all__ = ["TSV_COLUMNS", "ExportMixin", "tsv_columns"]
