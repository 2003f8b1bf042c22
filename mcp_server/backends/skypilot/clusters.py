"""This workspace's clusters: named `<prefix>-<workspace tag>-NN`, launched from the task YAML
(always with autostop + down), taken down, adopted again on start (`reconcile`)."""

from __future__ import annotations

import concurrent.futures as cf
import copy
import logging
import re
import shutil
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp_server.backends.skypilot.joblog import ANSI_RE
from mcp_server.backends.skypilot.records import ClusterInfo, cluster_info
from mcp_server.backends.skypilot.staging import stage_prepare
from mcp_server.domain.config import FleetConfig
from mcp_server.domain.errors import FleetError, InvalidInput, TeardownIncomplete
from mcp_server.domain.models import Cluster
from mcp_server.domain.tool_names import Tool

if TYPE_CHECKING:
    from mcp_server.backends.skypilot.jobs import TrackedJob

log = logging.getLogger("autoresearch.skypilot")


class ProvisionFailed(FleetError):
    """No cluster could be brought up."""


class ClustersMixin:
    """Cluster provision / teardown / reconcile and the cached view of `sky.status`.

    Part of SkyPilotBackend (backend.py), which sets up the state below and provides
    `task_path` and `launch_task_config`."""

    name: str
    config: FleetConfig
    sky: Any
    workspace: Path
    state_dir: Path
    cluster_prefix: str
    _name_re: re.Pattern[str]
    _exc_gone: type[BaseException]
    _lock: threading.RLock
    _provision_lock: threading.Lock
    _jobs: dict[tuple[str, int], TrackedJob]
    _clusters: dict[str, ClusterInfo]
    _clusters_at: float
    _clusters_asked_at: float
    _gone: dict[str, float]       # vanished under us (their jobs are lost); name -> when marked
    _torn_down: dict[str, float]  # removed by teardown (their jobs are cancelled); name -> when marked
    _tearing_down: set[str]       # `sky.down` in progress
    timings: dict[str, deque[float]]
    cluster_cache_s: float
    _view_busy: bool
    _exec_pool: cf.ThreadPoolExecutor

    if TYPE_CHECKING:   # provided by SkyPilotBackend
        def task_path(self) -> Path: ...
        def launch_task_config(self, gpu_type: str | None, workdir: Path) -> dict[str, Any]: ...

    def is_ours(self, name: str) -> bool:
        return bool(self._name_re.match(name))

    def _status(self, names: list[str] | None = None, refresh: str = "NONE") -> list[Any]:
        mode = getattr(self.sky.StatusRefreshMode, refresh)
        return list(self.sky.get(self.sky.status(cluster_names=names, refresh=mode)))

    def _refresh_clusters(self, refresh: str = "NONE", max_age_s: float = 0.0) -> dict[str, ClusterInfo]:
        with self._lock:
            if max_age_s and time.monotonic() - self._clusters_at < max_age_s:
                return dict(self._clusters)
        asked_at = time.monotonic()
        asked_wall = time.time()
        recs = self._status(None, refresh)
        infos = {i.name: i for i in (cluster_info(r) for r in recs) if self.is_ours(i.name)}
        with self._lock:
            if refresh == "NONE" and asked_at < self._clusters_asked_at:
                # a slow listing of SkyPilot's records (the background renew) asked before the one
                # installed: the older view (a new cluster still INIT, one since gone still UP).
                # A refreshing listing (AUTO, FORCE) is installed whenever it returns: it asked the
                # clouds, so it is at least as fresh as records read while it ran.
                return dict(self._clusters)
            # a cluster with jobs in flight that SkyPilot no longer lists (preempted, downed
            # outside): read its queue now rather than when its jobs could have ended
            for j in self._jobs.values():
                if (j.outcome is None and j.cluster not in infos and j.submitted_at < asked_wall
                        and j.cluster not in self._tearing_down):
                    j.check_at = 0.0
            for marks in (self._gone, self._torn_down):
                for name, marked_at in list(marks.items()):
                    if name not in infos:
                        continue
                    if asked_at > marked_at:     # listed by a status asked after it went: it is back
                        del marks[name]          # (re-created, or adopted again), listed from now on
                        log.info("cluster %s is listed by SkyPilot again (%s)", name, infos[name].state)
                    else:
                        infos.pop(name)          # a status asked before it went: stale record
            self._clusters = infos
            self._clusters_asked_at = max(self._clusters_asked_at, asked_at)
            self._clusters_at = time.monotonic()
            return dict(infos)

    def _cluster_view(self) -> dict[str, ClusterInfo]:
        """The clusters as last listed, never older than `cluster_cache_s` for long: a stale view
        is handed out while one `sky.status` (no refresh: SkyPilot's own records) renews it in the
        background, so a slow API server (`sky status` ~40 s under load) holds neither a submit nor
        the scheduler. Only the first view, before any listing, is read synchronously."""
        with self._lock:
            loaded = self._clusters_at > 0
            stale = time.monotonic() - self._clusters_at >= self.cluster_cache_s
            view = dict(self._clusters)
            start = loaded and stale and not self._view_busy
            if start:
                self._view_busy = True
        if not loaded:
            return self._refresh_clusters()
        if start:
            def renew() -> None:
                try:
                    self._refresh_clusters()
                except Exception:  # noqa: BLE001 - the next call tries again
                    log.warning("background sky status failed", exc_info=True)
                finally:
                    with self._lock:
                        self._view_busy = False
            try:
                self._exec_pool.submit(renew)
            except RuntimeError:      # closed
                with self._lock:
                    self._view_busy = False
        return view

    def _cluster_model(self, info: ClusterInfo) -> Cluster:
        with self._lock:
            running = sorted(j.handle.experiment_id for j in self._jobs.values()
                             if j.cluster == info.name and j.outcome is None and not j.cancelled)
        return Cluster(name=info.name, backend=self.name, gpu_type=info.gpu_type, gpu_count=info.gpu_count,
                       state=info.state, cost_per_hour=info.cost_per_hour, simulated=False,
                       running=running, created_at=info.created_at)

    def clusters(self) -> list[Cluster]:
        infos = self._cluster_view()
        return [self._cluster_model(i) for i in sorted(infos.values(), key=lambda i: i.name)]

    def queue_depth(self, cluster: str) -> int:
        return 2

    def _next_names(self, count: int) -> list[str]:
        used = set()
        for rec in self._status(None):
            m = self._name_re.match(str(rec.name))
            if m:
                used.add(int(m.group(1)))
        names: list[str] = []
        i = 1
        while len(names) < count:
            if i not in used:
                names.append(f"{self.cluster_prefix}{i:02d}")
            i += 1
        return names

    def provision(self, count: int, gpu_type: str | None = None) -> list[Cluster]:
        if not isinstance(count, int) or count < 1 or count > 256:
            raise InvalidInput(f"count must be an integer from 1 to 256, got {count!r}.")
        with self._provision_lock:
            stage = stage_prepare(self.state_dir, self.workspace, self.config)
            try:
                cfg = self.launch_task_config(gpu_type, stage)
                try:
                    task = self.sky.Task.from_yaml_config(copy.deepcopy(cfg))
                except Exception as e:  # noqa: BLE001 - SkyPilot's validation message is the useful part
                    raise InvalidInput(f"the SkyPilot task {self.task_path()} is not valid: {e}") from None
                names = self._next_names(count)
                with self._lock:
                    for n in names:
                        self._gone.pop(n, None)
                        self._torn_down.pop(n, None)
                t0 = time.monotonic()
                requests = {}
                errors: dict[str, str] = {}
                ok: list[str] = []
                for name in names:
                    try:
                        requests[name] = self.sky.launch(
                            task, cluster_name=name, idle_minutes_to_autostop=int(self.config.sky_autostop_minutes),
                            down=True, retry_until_up=False)
                    except Exception as e:  # noqa: BLE001
                        errors[name] = f"{type(e).__name__}: {ANSI_RE.sub('', str(e))[:2000]}"

                def wait(name: str) -> None:
                    try:
                        self.sky.get(requests[name])
                        ok.append(name)
                    except Exception as e:  # noqa: BLE001
                        errors[name] = f"{type(e).__name__}: {ANSI_RE.sub('', str(e))[:2000]}"

                if requests:   # its own threads: the refresher keeps the shared pool
                    with cf.ThreadPoolExecutor(max_workers=min(32, len(requests))) as waiters:
                        list(waiters.map(wait, list(requests)))
                self.timings["launch_s"].append(time.monotonic() - t0)
                for name in errors:           # never leave a half-launched cluster billing
                    try:
                        self.sky.get(self.sky.down(name))
                    except Exception:  # noqa: BLE001
                        log.warning("down of failed cluster %s failed", name, exc_info=True)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
        infos = self._refresh_clusters()
        if not ok:
            detail = "; ".join(f"{n}: {e}" for n, e in errors.items())
            raise ProvisionFailed(
                f"No cluster came up ({detail[:3000]}). Check the task YAML's resources/infra "
                f"({self.task_path()}) and `sky check`; the failed clusters were taken down.")
        return [self._cluster_model(infos[n]) for n in sorted(ok) if n in infos]

    def teardown(self, names: list[str] | None = None) -> list[str]:
        """`sky.down` each cluster; the ones really removed are returned (their jobs end as
        cancelled). A cluster whose down fails is still there: it stays listed, its jobs are left
        alone, and TeardownIncomplete (naming it, with SkyPilot's message) is raised after the
        other downs are done, its `removed` listing the clusters that did go."""
        current = self._refresh_clusters()
        if names is None:
            targets = sorted(current)
        else:
            bad = [n for n in names if not isinstance(n, str) or not self.is_ours(n)]
            if bad:
                raise InvalidInput(f"not clusters of this workspace (names start with {self.cluster_prefix!r}): "
                                   f"{bad[:10]}")
            targets = list(dict.fromkeys(names))
        with self._lock:
            self._tearing_down.update(targets)   # no new jobs; the refresher draws no conclusions meanwhile
        removed: list[str] = []
        errors: dict[str, str] = {}
        try:
            requests = {}
            for n in targets:
                try:
                    requests[n] = self.sky.down(n)
                except Exception as e:  # noqa: BLE001
                    errors[n] = f"{type(e).__name__}: {ANSI_RE.sub('', str(e)).strip()[:500]}"
            for n, rid in requests.items():
                try:
                    self.sky.get(rid)
                    removed.append(n)
                except self._exc_gone:
                    removed.append(n)
                except Exception as e:  # noqa: BLE001
                    errors[n] = f"{type(e).__name__}: {ANSI_RE.sub('', str(e)).strip()[:500]}"
        finally:
            with self._lock:
                now = time.monotonic()
                for n in removed:
                    self._torn_down[n] = now
                self._tearing_down.difference_update(targets)
        try:
            infos = self._refresh_clusters()
        except Exception:  # noqa: BLE001 - what was removed is known; the next listing shows the rest
            log.warning("sky status after teardown failed", exc_info=True)
            infos = {}
        if not errors:
            return removed
        for n, err in errors.items():
            log.warning("sky down %s failed: %s", n, err)
        failed = sorted(errors)
        what = "; ".join(
            f"{n}: {errors[n]} (SkyPilot lists it as {infos[n].state})" if n in infos
            else f"{n}: {errors[n]} (not in `sky status` now; check `sky status --refresh {n}`)"
            for n in failed)
        raise TeardownIncomplete(
            f"Could not take down {len(failed)} cluster{'s' if len(failed) > 1 else ''}: {what}. "
            f"{'They are' if len(failed) > 1 else 'It is'} still there and may still cost money; "
            f"{'their' if len(failed) > 1 else 'its'} experiments were left running. Call "
            f"{Tool.TEARDOWN_CLUSTERS}(names={failed}) again, or run `sky down {' '.join(failed)}` by hand. "
            + (f"Taken down: {', '.join(removed)} (their experiments are cancelled)." if removed
               else "Nothing was taken down."),
            removed=removed)

    def reconcile(self) -> list[Cluster]:
        """This workspace's clusters as SkyPilot sees them now (refreshed); autostop re-armed where unset."""
        infos = self._refresh_clusters(refresh="AUTO")
        for info in infos.values():
            if info.state == "up" and (info.autostop is None or info.autostop < 0):
                try:
                    self.sky.get(self.sky.autostop(info.name, int(self.config.sky_autostop_minutes), down=True))
                except Exception:  # noqa: BLE001
                    log.warning("could not set autostop on %s", info.name, exc_info=True)
        return [self._cluster_model(i) for i in sorted(infos.values(), key=lambda i: i.name)]

