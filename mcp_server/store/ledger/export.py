"""The `results.tsv` export (`ExportMixin`, TSV_COLUMNS).

The columns of karpathy/autoresearch's file (commit, val_bpb, memory_gb, status, description)
followed by id, wave, gpu, cluster, seed, steps, decision, and the agent's hypothesis (launch) and
reason (keep/discard). Rules: one row per experiment that is no
longer live, in launch order; a field never holds a tab or newline; the file is replaced
atomically (written beside it, then renamed).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from mcp_server.domain.models import Status
from mcp_server.store.ledger.connection import LedgerBase

TSV_COLUMNS = ["commit", "val_bpb", "memory_gb", "status", "description",
               "id", "wave", "gpu", "cluster", "seed", "steps", "decision", "hypothesis", "reason"]


def _clean_tsv(text: Any) -> str:
    return " ".join(str(text).split())


class ExportMixin(LedgerBase):
    """tsv_rows() and export_tsv()."""

    def tsv_rows(self) -> list[list[str]]:
        rows = self._conn().execute(
            "SELECT commit_sha, val_bpb, peak_vram_mb, status, decision, description, id, wave_id, ran_on_gpu, "
            "cluster, seed, num_steps, hypothesis, reason FROM experiments WHERE status NOT IN ('queued', 'running') "
            "ORDER BY seq"
        ).fetchall()
        out = []
        for commit, bpb, vram, status, decision, desc, eid, wave, gpu, cluster, seed, steps, hyp, why in rows:
            ok = status == Status.done.value and bpb is not None
            out.append([
                (commit or "")[:7],
                f"{bpb:.6f}" if ok else "0.000000",
                f"{(vram or 0.0) / 1024:.1f}" if ok else "0.0",
                decision or status,
                _clean_tsv(desc),
                eid, wave or "", gpu or "", cluster or "", str(seed), "" if steps is None else str(steps),
                decision or "", _clean_tsv(hyp or ""), _clean_tsv(why or ""),
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


__all__ = ["TSV_COLUMNS", "ExportMixin"]
