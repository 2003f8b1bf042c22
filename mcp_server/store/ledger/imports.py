"""History imported from an earlier results.tsv (`ImportMixin.import_history`): one experiment
per row, marked imported, its seed unknown, in ONE transaction; a row already imported (same
`import_key`) is skipped, so importing the same file again adds nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from mcp_server.domain.ids import id_seq
from mcp_server.domain.results_import import ImportRow
from mcp_server.store.ledger.connection import LedgerBase
from mcp_server.store.ledger.schema import METRIC_FIELDS


class ImportMixin(LedgerBase):
    def import_history(self, rows: list[ImportRow], metric: str, gpu_type: str,
                       resolve: Callable[[str], tuple[str, str | None] | None]) -> list[str]:
        """Insert the rows not imported before; returns the new experiment ids. `resolve(commit)`
        gives (full sha, code hash) for a commit the repository has, else None (then the row keeps
        the short commit and has no code hash: a group of its own)."""
        now = time.time()
        new: list[str] = []
        with self.tx() as c:
            known = {k for (k,) in c.execute("SELECT import_key FROM experiments WHERE import_key IS NOT NULL")}
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) FROM experiments").fetchone()[0]
            for i, r in enumerate(rows):
                if r.key in known:
                    continue
                known.add(r.key)
                seq += 1
                eid = f"e{seq:04d}"
                assert id_seq(eid) == seq
                linked = resolve(r.commit) if r.commit else None
                commit, code_hash = linked if linked else (r.commit, None)
                metrics: dict[str, float | None] = {}
                extra: dict[str, float] = {}
                if r.value is not None:
                    if metric in METRIC_FIELDS:
                        metrics[metric] = r.value
                    else:
                        extra[metric] = r.value
                if r.memory_gb is not None:
                    metrics["peak_vram_mb"] = r.memory_gb * 1024
                cols = ["seq", "id", "description", "kind", "commit_sha", "code_hash", "seed", "gpu_type",
                        "status", "decision", "ran_on_gpu", "created_at", "ended_at", "imported", "import_key",
                        "metrics_extra", *metrics]
                vals = [seq, eid, r.description, "imported", commit, code_hash, 0, gpu_type, r.status.value,
                        r.decision.value if r.decision else None, gpu_type, now + i * 1e-3, now, 1, r.key,
                        json.dumps(extra, sort_keys=True) if extra else None, *metrics.values()]
                c.execute(f"INSERT INTO experiments({', '.join(cols)}) VALUES({', '.join('?' * len(cols))})", vals)
                c.execute("INSERT INTO events(experiment_id, t, kind, detail) VALUES(?,?,?,?)",
                          (eid, now, "imported", f"results.tsv line {r.line}"))
                new.append(eid)
        return new


__all__ = ["ImportMixin"]
