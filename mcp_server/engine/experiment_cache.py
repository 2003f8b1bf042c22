"""The engine's in-memory view of every experiment: the experiments by id and the analysis index
over them (groups, noise floors, verdicts), loaded from the ledger once and then kept current by
the ledger itself: the cache subscribes to the ledger's change hook (`Ledger.subscribe`), so every
committed write that changes experiments, whoever makes it, refreshes them here before the write
returns (so a reader woken by the news sees the new state). Nobody calls the cache to update it.

Answers derived from the index (leaderboards, throughput) are cached per (index object, index
version): a change that matters moves the version, a rebuilt index is a new object."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mcp_server.domain import analysis
from mcp_server.domain.analysis import Leaderboard
from mcp_server.domain.metric import DEFAULT_METRIC, Metric
from mcp_server.domain.models import Experiment
from mcp_server.store.ledger import Ledger

log = logging.getLogger("autoresearch.engine")


class ExperimentCache:
    def __init__(self, ledger: Ledger, metric: Metric = DEFAULT_METRIC) -> None:
        self.ledger = ledger
        self.metric = metric
        self.lock = threading.Lock()
        self._by_id: dict[str, Experiment] | None = None
        self._index: analysis.Index | None = None
        self._boards: dict[tuple[Any, ...], tuple[analysis.Index, int, Leaderboard]] = {}
        self._throughput: tuple[analysis.Index, int, dict[str, dict[str, Any]]] | None = None
        #: grows on every change the cache hears of (any field, a dispatch too) and on every reload:
        #: answers that read fields the index ignores (reasons, live states) are cached on it
        self.changes = 0
        self.unsubscribe = ledger.subscribe(self.refresh)

    def refresh(self, ids: list[str]) -> None:
        """These experiments changed in the ledger (the ledger's change hook calls this after the
        commit): read them again (if the cache is loaded). If they cannot be read, the cache is
        dropped and loaded afresh on next use (never stale)."""
        with self.lock:
            if self._by_id is not None and ids:
                try:
                    exps = self.ledger.get_many(list(dict.fromkeys(ids)))
                except Exception:  # noqa: BLE001 - the write is committed; reload rather than serve stale data
                    log.exception("reading changed experiments failed; the cache is reloaded from the ledger")
                    self._by_id = self._index = None
                    return
                self._put(exps)

    def _put(self, exps: list[Experiment]) -> None:
        self.changes += 1
        if self._by_id is None or self._index is None:
            return
        try:
            for e in exps:
                self._by_id[e.id] = e
                self._index.put(e)
        except Exception:  # noqa: BLE001 - never serve a half-updated index: reload it on next use
            log.exception("updating the analysis index failed; it is rebuilt from the ledger")
            self._by_id = self._index = None

    def _load(self) -> None:
        """Load the cache and build the index (with the lock held) if not loaded."""
        if self._by_id is None or self._index is None:
            exps = self.ledger.all_experiments()
            self.changes += 1
            self._index = analysis.Index(exps, self.metric)
            self._by_id = {e.id: e for e in exps}

    @contextmanager
    def indexed(self) -> Iterator[analysis.Index]:
        """The analysis index, current with every change recorded, held under the lock for the
        duration of the block (keep the block short: writers wait; and write nothing to the ledger
        inside it: its change hook would wait for this lock)."""
        with self.lock:
            self._load()
            assert self._index is not None
            yield self._index

    def snapshot(self) -> tuple[int, list[Experiment]]:
        """(changes, every experiment) read together under the lock."""
        with self.lock:
            self._load()
            assert self._by_id is not None
            return self.changes, list(self._by_id.values())

    def some(self, ids: list[str]) -> tuple[int, list[Experiment]]:
        """(changes, the experiments with these ids that exist) read together under the lock."""
        with self.lock:
            self._load()
            assert self._by_id is not None
            return self.changes, [self._by_id[i] for i in ids if i in self._by_id]

    def all(self) -> list[Experiment]:
        """Every experiment (loads the cache on first use)."""
        with self.lock:
            self._load()
            assert self._by_id is not None
            return list(self._by_id.values())

    def leaderboard(self, gpu_type: str | None, limit: int) -> Leaderboard:
        """`Index.leaderboard`, cached until the index version moves (a deep copy: callers may edit it)."""
        key = (gpu_type, limit)
        with self.indexed() as idx:
            hit = self._boards.get(key)
            if hit is not None and hit[0] is idx and hit[1] == idx.version:
                board = hit[2]
            else:
                board = idx.leaderboard(gpu_type, limit)
                if len(self._boards) > 64:
                    self._boards.clear()
                self._boards[key] = (idx, idx.version, board)
        return board.model_copy(deep=True)

    def throughput(self) -> dict[str, dict[str, Any]]:
        """`ledger.throughput_by_gpu()`, cached until the analysis index version moves (it does when
        a finished experiment's status, GPU type or metrics change). Until the index is loaded
        (the engine's exporter thread loads it at start) changes are not tracked, so nothing is cached."""
        with self.lock:
            idx = self._index
            version = idx.version if idx is not None else -1   # read before the query: the answer is at least this new
            hit = self._throughput
            if idx is not None and hit is not None and hit[0] is idx and hit[1] == version:
                return hit[2]
        measured = self.ledger.throughput_by_gpu()
        if idx is not None:
            self._throughput = (idx, version, measured)
        return measured
