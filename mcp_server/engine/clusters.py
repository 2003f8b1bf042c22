"""The engine's clusters: list them (with what runs and waits on each), provision more within
max_clusters, tear them down (experiments running on a removed cluster end cancelled)."""

from __future__ import annotations

import logging

from mcp_server.domain import gpus
from mcp_server.domain.errors import InvalidInput, LimitExceeded, NotFound, TeardownIncomplete
from mcp_server.domain.models import Cluster
from mcp_server.domain.tool_names import Tool
from mcp_server.engine.checks import check_int, short
from mcp_server.engine.parts import EngineParts

log = logging.getLogger("autoresearch.engine")


class ClustersMixin(EngineParts):
    @property
    def fixed_slots(self) -> bool:
        """True when the slots are this machine's own (local backend): nothing to provision or tear down."""
        return self.backend.fixed_slots

    def list_clusters(self) -> list[Cluster]:
        """Every slot/cluster with its GPU type, state, the experiment training on it now and those
        queued ahead behind it (submitted; they start when it ends)."""
        slots = self.scheduler.refresh_clusters()
        self.ledger.upsert_clusters(slots)
        running: dict[str, list[str]] = {}
        ahead: dict[str, list[str]] = {}
        waiting = self.scheduler.queued_ahead()
        for f in self.scheduler.in_flight().values():
            (ahead if f.exp_id in waiting else running).setdefault(f.cluster, []).append(f.exp_id)
        return [c.model_copy(update={"running": sorted(running.get(c.name, [])),
                                     "queued_ahead": sorted(ahead.get(c.name, []))}) for c in slots]

    def provision_clusters(self, count: int, gpu_type: str | None = None) -> list[Cluster]:
        """Bring up `count` more clusters (of `gpu_type` where the backend can choose), within max_clusters."""
        count = check_int("count", count, 1, max(1, self.config.max_clusters))
        if self.backend.fixed_slots:
            return self.backend.provision(count, gpu_type)   # refuses, naming the server flags that change them
        if gpu_type is not None:
            if not isinstance(gpu_type, str) or len(gpu_type) > 64:
                raise InvalidInput(f"gpu_type must be a GPU type name such as 'H100', got {short(gpu_type)}.")
            gpu_type = gpus.lookup(gpu_type).name
        alive = [c for c in self.scheduler.refresh_clusters() if c.state != "gone"]
        if len(alive) + count > self.config.max_clusters:
            raise LimitExceeded(
                f"{len(alive)} clusters are up and {count} more were asked for; the limit is max_clusters="
                f"{self.config.max_clusters}. Tear some down ({Tool.TEARDOWN_CLUSTERS}) or ask for at most "
                f"{max(0, self.config.max_clusters - len(alive))}.")
        new = self.backend.provision(count, gpu_type)
        self.ledger.upsert_clusters(new)
        self.scheduler.refresh_clusters()
        return new

    def teardown_clusters(self, names: list[str] | None = None) -> list[str]:
        """Stop and delete the named clusters (None = all). Experiments that were running on a
        removed cluster are recorded as cancelled. (Local slots are this machine: nothing is
        removed and nothing is cancelled.) When some cluster could not be taken down the backend
        raises TeardownIncomplete: the clusters it did remove are recorded all the same, and the
        error is raised again (it names the clusters that are still there)."""
        current = {c.name: c for c in self.scheduler.refresh_clusters()}
        if names is not None:
            if not isinstance(names, (list, tuple)) or not names or len(names) > 1000:
                raise InvalidInput("names must be a non-empty list of cluster names (or omitted for all). "
                                   f"Call {Tool.LIST_CLUSTERS} to see them.")
            bad = [n for n in names if not isinstance(n, str) or n not in current]
            if bad:
                raise NotFound(f"Unknown cluster{'s' if len(bad) > 1 else ''}: "
                               f"{', '.join(short(b, 40) for b in bad[:10])}. "
                               f"Clusters: {', '.join(current) or 'none'}. Nothing was torn down.")
            names = list(dict.fromkeys(names))
        try:
            removed = self.backend.teardown(names)
        except TeardownIncomplete as exc:
            try:
                self._clusters_removed(exc.removed)
            except Exception:  # noqa: BLE001 - the agent must still hear which clusters survived
                log.exception("recording the clusters a partial teardown removed failed")
            raise
        self._clusters_removed(removed)
        return removed

    def _clusters_removed(self, removed: list[str]) -> None:
        """The backend took these clusters down: gone in the ledger, the experiments that were
        running on them cancelled, the scheduler's slots refreshed."""
        if removed:
            self.ledger.set_cluster_state(removed, "gone")
            victims = [f.exp_id for f in self.scheduler.in_flight().values() if f.cluster in removed]
            if victims:
                self.scheduler.cancel(victims, reason="cancelled: its cluster was torn down")
        self.scheduler.refresh_clusters()
