"""The refresher thread: `poll` never blocks on SkyPilot. Per cluster with jobs in flight it asks
`sky.queue` (one call per cluster, jobs matched by their unique names), fetches the log of each
finished job with `sky.tail_logs` and turns it into the job's outcome. A cluster that no longer
exists or is STOPPED makes its jobs `lost` at once; one whose queue cannot be read otherwise (INIT
while SkyPilot re-checks or restarts it, network, API server) only once that has lasted
`unreachable_lost_s`. A cluster being torn down is left to `teardown`."""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp_server.backends.base import JobOutcome
from mcp_server.backends.skypilot.joblog import ANSI_RE, SKY_JOB_LOG, parse_job_log
from mcp_server.backends.skypilot.jobs import TrackedJob
from mcp_server.backends.skypilot.records import REQUEST_DONE_BAD, TERMINAL, ClusterInfo, status_value
from mcp_server.runtime import runner

log = logging.getLogger("autoresearch.skypilot")


@dataclass
class ClusterWatch:
    """Per-cluster refresh bookkeeping."""

    busy: bool = False
    last: float = 0.0
    failing_since: float | None = None
    last_error: str = ""
    fails: int = 0                     # reads in a row that failed (back-off)
    extra: dict[str, Any] = field(default_factory=dict)


class RefresherMixin:
    """The background refresh loop and what it concludes about each job.

    Part of SkyPilotBackend (backend.py), which sets up the state below; the job table and
    `_finish` come from JobsMixin, `_status` from ClustersMixin."""

    sky: Any
    refresh_interval_s: float
    unreachable_lost_s: float
    request_grace_s: float
    _exc_gone: type[BaseException]
    _exc_not_up: type[BaseException]
    _lock: threading.RLock
    _jobs: dict[tuple[str, int], TrackedJob]
    _watch: dict[str, ClusterWatch]
    _clusters: dict[str, ClusterInfo]
    _gone: dict[str, float]
    _torn_down: dict[str, float]
    _tearing_down: set[str]
    _pool: cf.ThreadPoolExecutor
    _wake: threading.Event
    _stop: threading.Event
    _thread: threading.Thread | None
    timings: dict[str, deque[float]]
    max_poll_s: float
    max_reads_in_flight: int
    _reads_in_flight: int
    _latency: dict[str, float]
    _run_seen: deque[float]
    _exec_pool: cf.ThreadPoolExecutor

    if TYPE_CHECKING:   # provided by JobsMixin and ClustersMixin
        def _dispatch_deferred(self, cluster: str, raise_errors: bool = False) -> None: ...
        def _send_cancel(self, job: TrackedJob) -> None: ...
        def _finish(self, job: TrackedJob, outcome: JobOutcome) -> None: ...
        def _jobs_on(self, cluster: str) -> list[TrackedJob]: ...
        def _status(self, names: list[str] | None = None, refresh: str = "NONE") -> list[Any]: ...

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="arf-sky-refresh", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._refresh_round()
            except Exception:  # noqa: BLE001 - keep refreshing whatever one round did
                log.exception("skypilot refresh round failed")
            self._wake.wait(self.refresh_interval_s)
            self._wake.clear()

    # -- when to read what (traffic grows with finished experiments, not clusters x time) --------
    # A cluster's queue is read only when one of its jobs can have ended: not before the head
    # job's basis (exec'd, or the job ahead seen ended) + the runner's budget, or + the shortest
    # runs seen lately (budget + start-up + eval), whichever is later; then, while it runs on,
    # at growing intervals (refresh_interval_s doubling up to max_poll_s, never shorter than the
    # API server's own recent latency). Jobs behind the head wait for its end. At most
    # max_reads_in_flight reads are out at once, earliest due first; execs have a pool of their
    # own, so a slow read never holds a dispatch. Exec requests are checked in one batched
    # `api_status` for all of them, when the first is due (exec latency seen lately), backing off.

    def _backoff(self, n: int, kind: str = "queue_s") -> float:
        step = self.refresh_interval_s * (2 ** min(n, 20))
        lat = self._latency.get(kind, 0.0)
        return max(min(step, self.max_poll_s), lat)

    def _note_latency(self, kind: str, seconds: float) -> None:
        self.timings[kind].append(seconds)
        with self._lock:
            prev = self._latency.get(kind)
            self._latency[kind] = seconds if prev is None else 0.7 * prev + 0.3 * seconds

    def _expected_run_s(self, job: TrackedJob) -> float:
        """When a job is first worth looking for as ended: its budget, or the 75th percentile of
        recent runs (from their basis to their end: budget + start-up + eval), whichever is later,
        but never past its hard timeout. Reading later than the typical end costs detection time
        only: the job queued ahead on the cluster is already running."""
        seen = sorted(self._run_seen)
        typical = seen[(3 * len(seen)) // 4] if len(seen) >= 4 else 0.0
        timeout = float((job.handle.backend_ref or {}).get("timeout_s") or 0.0) or float("inf")
        return min(max(job.min_run_s, typical), timeout)

    def _exec_expected_s(self) -> float:
        # capped at max_poll_s: while the fleet ramps up, execs wait minutes in the long queue and
        # that latency must not become the wait before a cluster's second job is sent; an
        # `api_status` check is one cheap batched read that does not queue
        return max(self.refresh_interval_s, min(self._latency.get("exec_done_s", 0.0), self.max_poll_s))

    def _cluster_due(self, cluster: str, jobs: list[TrackedJob]) -> float:
        """When `cluster`'s queue is next worth reading (epoch s)."""
        with self._lock:
            if cluster in self._tearing_down:
                return float("inf")
            if cluster in self._torn_down or cluster in self._gone:
                return 0.0
        due = float("inf")
        for j in jobs:
            if j.deferred:
                continue
            due = min(due, j.check_at)
        return due

    def _refresh_round(self) -> None:
        self._check_requests()
        now = time.time()
        with self._lock:
            by_cluster: dict[str, list[TrackedJob]] = {}
            for j in self._jobs.values():
                if j.outcome is None:
                    by_cluster.setdefault(j.cluster, []).append(j)
            for c in [c for c, w in self._watch.items() if c not in by_cluster and not w.busy]:
                del self._watch[c]             # no job in flight there (any more)
            due = []
            for c, jobs in by_cluster.items():
                w = self._watch.setdefault(c, ClusterWatch())
                if w.busy:
                    continue
                at = self._cluster_due(c, jobs)
                if at <= now:
                    due.append((at, c))
            due.sort()
            room = max(0, self.max_reads_in_flight - self._reads_in_flight)
            todo = [c for _, c in due[:room]]
            for c in todo:
                self._watch[c].busy = True
                self._reads_in_flight += 1
        for c in todo:
            self._pool.submit(self._refresh_cluster_safe, c)

    def _check_requests(self) -> None:
        """Which exec requests have finished: one batched `api_status` for all open ones, sent
        when the first is due. A failed one makes its job lost at once; a deferred job behind a
        finished one is exec'd at once instead of after the next queue read."""
        now = time.time()
        with self._lock:
            waiting = {j.request_id: j for j in self._jobs.values()
                       if j.request_id and not j.deferred and j.request_done_at is None and j.outcome is None
                       and self._request_matters(j)}
            if not waiting or min(j.req_check_at for j in waiting.values()) > now:
                return
        try:
            payloads = self.sky.api_status(list(waiting))
        except Exception:  # noqa: BLE001 - the queue read decides anyway
            payloads = []
        done_at = time.time()
        clusters = set()
        failed: list[TrackedJob] = []
        seen = set()
        for p in payloads:
            rid = str(getattr(p, "request_id", ""))
            job = waiting.get(rid)
            if job is None:
                continue
            seen.add(rid)
            st = status_value(getattr(p, "status", ""))
            if st == "SUCCEEDED":
                with self._lock:
                    if job.request_done_at is None:
                        job.request_done_at = done_at
                        # the job is in its cluster's queue (it may have started already)
                if job.exec_at is not None:
                    self._note_latency("exec_done_s", done_at - job.exec_at)
                clusters.add(job.cluster)
            elif st in REQUEST_DONE_BAD:
                failed.append(job)
            else:
                seen.discard(rid)
        with self._lock:
            for rid, job in waiting.items():
                if rid not in seen:
                    job.req_checks += 1
                    job.req_check_at = done_at + min(self._backoff(job.req_checks, "exec_done_s"), self.max_poll_s)
        for job in failed:
            with self._lock:
                if job.outcome is not None:
                    continue
            try:
                self.sky.get(job.request_id)
                why = "exec request failed"
            except Exception as e:  # noqa: BLE001
                why = f"exec failed: {type(e).__name__}: {ANSI_RE.sub('', str(e))[:500]}"
            self._finish(job, JobOutcome(job.handle, lost=True, reason=why))
            clusters.add(job.cluster)
        for c in clusters:
            with self._lock:
                has_deferred = any(j.cluster == c and j.deferred and j.outcome is None for j in self._jobs.values())
            if has_deferred:
                self._exec_pool.submit(self._dispatch_deferred_safe, c)

    def _request_matters(self, job: TrackedJob) -> bool:
        """Is the exec request's end worth asking about before the next queue read? Only where
        the cluster waits on it: a job is deferred behind it, or it is the cluster's head (nothing
        of ours runs ahead, so a failed exec would leave the cluster idle). A job exec'd behind a
        running one is seen in the queue read at the head's end (a failed one is missing there,
        and its request is asked about then). Called with the lock held."""
        others = [j for j in self._jobs.values() if j.cluster == job.cluster and j.outcome is None and j is not job]
        if any(j.deferred for j in others):
            return True
        return not any(not j.deferred and j.submitted_at < job.submitted_at for j in others)

    def _dispatch_deferred_safe(self, cluster: str) -> None:
        try:
            self._dispatch_deferred(cluster)
        except Exception:  # noqa: BLE001
            log.exception("deferred exec on %s failed", cluster)

    def _refresh_cluster_safe(self, cluster: str) -> None:
        try:
            self._refresh_cluster(cluster)
        except Exception:  # noqa: BLE001
            log.exception("refresh of %s failed", cluster)
        finally:
            with self._lock:
                w = self._watch.setdefault(cluster, ClusterWatch())
                w.busy = False
                w.last = time.monotonic()
                self._reads_in_flight = max(0, self._reads_in_flight - 1)
                if w.failing_since is not None:      # unreadable: ask again later, backing off
                    w.fails += 1
                    retry = time.time() + self._backoff(w.fails)
                    for j in self._jobs.values():
                        if j.cluster == cluster and j.outcome is None:
                            j.check_at = max(j.check_at, retry)
                else:
                    w.fails = 0
            self._wake.set()

    def _refresh_cluster(self, cluster: str) -> None:
        jobs = self._jobs_on(cluster)
        if not jobs:
            return
        with self._lock:
            tearing_down, torn_down, gone = (cluster in self._tearing_down, cluster in self._torn_down,
                                             cluster in self._gone)
        if tearing_down:
            return      # teardown decides: its jobs are cancelled if it goes, left alone if it stays
        if torn_down:
            for j in jobs:
                self._finish(j, JobOutcome(j.handle, result={
                    "status": "cancelled", "error": f"cluster {cluster} was torn down", "metrics": {}}))
            return
        if gone:
            self._lose_all(jobs, f"cluster {cluster} vanished")
            return
        asked_at = time.time()
        t0 = time.monotonic()
        try:
            records = list(self.sky.get(self.sky.queue(cluster, skip_finished=False)))
        except self._exc_gone:
            with self._lock:
                self._gone[cluster] = time.monotonic()
                self._clusters.pop(cluster, None)
            self._lose_all(jobs, f"cluster {cluster} vanished (preempted, autostopped, or removed outside the fleet)")
            return
        except self._exc_not_up as e:
            self._unreachable(cluster, jobs, f"cluster {cluster} is not up: {ANSI_RE.sub('', str(e))[:300]}",
                              confirm=True)
            return
        except Exception as e:  # noqa: BLE001 - network, ssh, API server: retried, lost only if it lasts
            self._unreachable(cluster, jobs, f"{type(e).__name__}: {ANSI_RE.sub('', str(e))[:300]}")
            return
        self._note_latency("queue_s", time.monotonic() - t0)
        with self._lock:
            self._watch.setdefault(cluster, ClusterWatch()).failing_since = None
        by_name: dict[str, Any] = {}
        for r in records:
            name = str(getattr(r, "job_name", "") or "")
            prev = by_name.get(name)
            if prev is None or int(r.job_id) > int(prev.job_id):
                by_name[name] = r
        finished: list[tuple[TrackedJob, Any]] = []
        missing: list[TrackedJob] = []
        to_cancel: list[TrackedJob] = []
        with self._lock:
            for job in jobs:
                if job.deferred:
                    continue
                rec = by_name.get(job.name)
                if rec is None:
                    missing.append(job)
                    continue
                job.job_id = int(rec.job_id)
                job.status = status_value(rec.status)
                if job.request_done_at is None:
                    job.request_done_at = asked_at      # in the queue: its exec request is done
                    job.checks = 0                      # (the back-off while it was missing is over)
                if job.cancelled and job.status not in TERMINAL and not job.cancel_sent:
                    to_cancel.append(job)
                if job.status in TERMINAL:
                    finished.append((job, rec))
        self._schedule_reads(jobs, by_name, asked_at, finished)
        for job in missing:
            self._not_in_queue(job, asked_at)
        for job in to_cancel:
            self._send_cancel(job)
        for job, rec in finished:
            self._collect(job, rec)
        self._dispatch_deferred(cluster)

    def _schedule_reads(self, jobs: list[TrackedJob], by_name: dict[str, Any], asked_at: float,
                        finished: list[tuple[TrackedJob, Any]]) -> None:
        """After a good read of the cluster's queue: when to read it again for each of its jobs.
        A finished job's run length is noted (its record's end_at, else when it was seen); the
        next job in line starts from there; one still running is read again after a back-off."""
        now = time.time()
        ended_at: float | None = None
        with self._lock:
            for job, rec in finished:
                end = getattr(rec, "end_at", None)
                end = float(end) if isinstance(end, (int, float)) and asked_at - 86400 < end <= now + 5 else asked_at
                ended_at = end if ended_at is None else max(ended_at, end)
                if job.basis_at is not None and not job.cancelled:
                    self._run_seen.append(max(0.0, end - job.basis_at))
            done = {id(j) for j, _ in finished}
            head = True
            for job in sorted(jobs, key=lambda j: j.submitted_at):
                if job.deferred or id(job) in done or job.outcome is not None:
                    continue
                rec = by_name.get(job.name)
                if rec is None:       # not in the queue yet (its exec request still queued): look again
                    job.checks += 1   # later and later; its exec request decides if it never comes
                    job.check_at = now + self._backoff(job.checks)
                    continue
                start = getattr(rec, "start_at", None)
                start = float(start) if isinstance(start, (int, float)) and 0 < start <= now + 5 else None
                if job.basis_at is None:     # picked up from an earlier process: its record tells
                    job.basis_at = start if start is not None else asked_at
                elif start is not None:      # started on the cluster: later than exec'd when the
                    job.basis_at = max(job.basis_at, start)   # API server's long queue was full
                if ended_at is not None and head:
                    job.basis_at = max(job.basis_at, ended_at)   # it had to wait for the one ahead
                if job.cancelled:
                    job.check_at = now + self._backoff(0)
                elif head:
                    earliest = job.basis_at + self._expected_run_s(job)
                    if earliest <= asked_at:             # it could have ended, and had not
                        job.checks += 1
                        job.check_at = now + self._backoff(job.checks)
                    else:
                        job.check_at = earliest
                else:                            # behind the head: read again when the head can end
                    job.check_at = float("inf")
                head = False

    def _unreachable(self, cluster: str, jobs: list[TrackedJob], reason: str, confirm: bool = False) -> None:
        """The cluster's queue could not be read. Its jobs are lost at once only when SkyPilot
        (asked with a status refresh, `confirm`) no longer lists the cluster or shows it STOPPED
        (a stop ends its jobs); on any other reading -- INIT (a launch/restart in progress, or an
        abnormal cluster SkyPilot re-checks), UP, AUTOSTOPPING, or no answer -- they are kept,
        and lost only once the cluster has stayed unreadable for unreachable_lost_s."""
        with self._lock:
            w = self._watch.setdefault(cluster, ClusterWatch())
            if w.failing_since is None:
                w.failing_since = time.monotonic()
            failing_for = time.monotonic() - w.failing_since
        if confirm:
            try:
                recs = self._status([cluster], refresh="AUTO")
            except Exception:  # noqa: BLE001
                recs = None
            if recs is not None and not recs:
                with self._lock:
                    self._gone[cluster] = time.monotonic()
                    self._clusters.pop(cluster, None)
                self._lose_all(jobs, f"{reason}; SkyPilot no longer lists it (preempted, autodowned, or "
                                     "removed outside the fleet)")
                return
            state = status_value(recs[0].status) if recs else ""
            if state == "STOPPED":
                self._lose_all(jobs, f"{reason}; it is STOPPED, which ended its jobs")
                return
            if state:
                reason = f"{reason} (SkyPilot status now {state})"
        with self._lock:
            w.last_error = reason
        if failing_for > self.unreachable_lost_s:
            for j in jobs:          # in case it is still running there: it must not hold the cluster
                if j.job_id is not None:
                    try:
                        self.sky.cancel(cluster, job_ids=[j.job_id])
                    except Exception:  # noqa: BLE001
                        pass
            self._lose_all(jobs, f"cluster {cluster} unreachable for {failing_for:.0f} s: {reason}")

    def _lose_all(self, jobs: list[TrackedJob], reason: str) -> None:
        for j in jobs:
            self._finish(j, JobOutcome(j.handle, lost=True, reason=reason))

    def _not_in_queue(self, job: TrackedJob, asked_at: float) -> None:
        """The job is not (yet) in the cluster's queue: its exec request decides."""
        status = ""
        finished_at = None
        if job.request_id:
            try:
                st = self.sky.api_status([job.request_id])
            except Exception:  # noqa: BLE001
                return   # ask again next round
            if st:
                status = status_value(st[0].status)
                finished_at = getattr(st[0], "finished_at", None)
        if status in ("PENDING", "WAITING", "RUNNING"):
            return
        if status in REQUEST_DONE_BAD:
            try:
                self.sky.get(job.request_id)
                why = f"exec request {status.lower()}"
            except Exception as e:  # noqa: BLE001
                why = f"exec failed: {type(e).__name__}: {ANSI_RE.sub('', str(e))[:500]}"
            self._finish(job, JobOutcome(job.handle, lost=True, reason=why))
            return
        if status == "SUCCEEDED":
            if finished_at is None or float(finished_at) >= asked_at - 1.0:
                return   # it finished while we were asking: next round sees the job
            self._finish(job, JobOutcome(job.handle, lost=True,
                                         reason=f"job {job.name} is not on {job.cluster} although it was submitted"))
            return
        if time.time() - job.submitted_at <= self.request_grace_s:
            return
        if job.request_id is None and job.spec is None:
            # picked up from a handle of an earlier process: it still waited behind the job ahead
            # (never exec'd) and its spec file is gone, so this process cannot send it either
            why = (f"job {job.name} never reached {job.cluster}: it was still waiting behind the job ahead "
                   f"when the previous server process stopped, and its spec file is gone, so it cannot be "
                   f"sent from here; lost, the engine requeues it (while it has attempts left)")
        else:   # unknown request (an API server that lost its state) and not on the cluster
            why = f"job {job.name} is not on {job.cluster} and its exec request is unknown"
        log.warning("%s", why)
        self._finish(job, JobOutcome(job.handle, lost=True, reason=why))

    def _collect(self, job: TrackedJob, rec: Any) -> None:
        """A finished job: its log from SkyPilot -> run.log, sky_job.log, result.json; the outcome."""
        if job.cancelled:
            self._finish(job, JobOutcome(job.handle, result={"status": "cancelled", "metrics": {}}))
            return
        buf = io.StringIO()
        t0 = time.monotonic()
        try:
            self.sky.tail_logs(job.cluster, job.job_id, follow=False, output_stream=buf)
        except self._exc_gone:
            self._finish(job, JobOutcome(job.handle, lost=True,
                                         reason=f"cluster {job.cluster} vanished before its log was read"))
            return
        except Exception as e:  # noqa: BLE001
            with self._lock:
                w = self._watch.setdefault(job.cluster, ClusterWatch())
                tries = w.extra.get(job.name, 0) + 1
                w.extra[job.name] = tries
            if tries >= 5:
                self._finish(job, JobOutcome(job.handle, lost=True, reason=f"could not read the job log: {e}"))
            return
        self._note_latency("logs_s", time.monotonic() - t0)
        clean, train_log, result = parse_job_log(buf.getvalue())
        run_dir = Path(job.handle.run_dir)
        log_path: str | None = None
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / SKY_JOB_LOG).write_text(clean, encoding="utf-8")
            (run_dir / runner.LOG_FILE).write_text(train_log if train_log else clean, encoding="utf-8")
            log_path = str(run_dir / runner.LOG_FILE)
            if result is not None:
                tmp = run_dir / ".result.json.tmp"
                tmp.write_text(json.dumps(result, sort_keys=True), encoding="utf-8")
                os.replace(tmp, run_dir / runner.RESULT_FILE)
        except OSError:
            log.warning("could not write the logs of %s into %s", job.name, run_dir, exc_info=True)
        status = job.status
        if result is not None:
            self._finish(job, JobOutcome(job.handle, result=result, log_path=log_path))
        elif status == "CANCELLED":
            self._finish(job, JobOutcome(job.handle, lost=True, log_path=log_path,
                                         reason=f"job {job.name} was cancelled outside the fleet"))
        else:
            last = [line for line in clean.splitlines() if line.strip()][-3:]
            self._finish(job, JobOutcome(job.handle, lost=True, log_path=log_path,
                                         reason=f"SkyPilot job ended {status} without a result line: "
                                                + " | ".join(last)[:500]))
