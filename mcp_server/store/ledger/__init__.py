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

Change hook: `subscribe(fn)`; after every committed write transaction that inserted or updated
experiments, `fn(ids)` is called with their ids (the engine's experiment cache follows the ledger
this way, whoever writes).

`results.tsv` is an export: the columns of karpathy/autoresearch's file (commit, val_bpb,
memory_gb, status, description) followed by id, wave, gpu, cluster, seed, steps, decision.

The package, one concern per module (each layer only uses those above it in this list):

* `schema`: migrations, SCHEMA_VERSION, rows -> models;
* `connection`: per-thread connections, `tx()`, migrating, the change hook (`LedgerBase`);
* `records`: meta, clusters, experiments, waves, decisions, events;
* `attempts`: the state machine of an attempt (begin / started / handle / finish / lose / cancel);
* `accounting`: GPU-hours, cost, measured throughput;
* `export`: results.tsv;
* `imports`: history from an earlier results.tsv (import-results).
"""

from __future__ import annotations

from mcp_server.domain.models import TERMINAL
from mcp_server.store.ledger.accounting import AccountingMixin
from mcp_server.store.ledger.attempts import AttemptsMixin
from mcp_server.store.ledger.connection import ChangeListener
from mcp_server.store.ledger.export import TSV_COLUMNS, ExportMixin
from mcp_server.store.ledger.imports import ImportMixin
from mcp_server.store.ledger.records import RecordsMixin
from mcp_server.store.ledger.schema import EVENT_KINDS, METRIC_FIELDS, MIGRATIONS, SCHEMA_VERSION, LedgerError


class Ledger(RecordsMixin, AttemptsMixin, AccountingMixin, ExportMixin, ImportMixin):
    """The SQLite ledger of one research workspace. Safe to share between threads."""


__all__ = ["EVENT_KINDS", "METRIC_FIELDS", "ChangeListener", "Ledger", "LedgerError", "MIGRATIONS",
           "SCHEMA_VERSION", "TSV_COLUMNS", "TERMINAL"]
