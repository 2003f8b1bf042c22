"""The SkyPilot backend: experiments on GPU clusters anywhere SkyPilot reaches (Kubernetes, a
cloud, Slurm), through SkyPilot's Python SDK in this one long-lived process.

Clusters. `provision(n)` launches n clusters from the task YAML (`config.sky_task`, else the
workspace's `sky_task.yaml`, else the template's) named `<prefix>-<workspace tag>-NN`, always
with autostop + down. The YAML's `setup` installs the training deps and runs `prepare.py` once
per cluster. Each cluster's GPU type is read back from SkyPilot
(`handle.launched_resources.accelerators`): `{H100: 1, H200: 1}` in the YAML means "either", so a
fleet can come up mixed and every result says which GPU it ran on.

Experiments. `submit` never launches: it `sky.exec`s a Task on a warm cluster whose workdir is a
clean staging copy of that experiment's run dir, laid out as `arf-runs/<key>/...` so that the
additive workdir rsync puts each experiment in its own directory on the cluster. The run command
is built here from fixed parts (every value shlex-quoted): it takes a per-cluster lock, runs the
runner, then prints the train log between markers and the result line. `queue_depth` is 2: the
next experiment is submitted while one runs. Where the job's resource request lets SkyPilot
start it at once (CPU clusters; single-GPU clusters request half the GPU) it is already running,
waiting on the lock, when the previous runner exits: the gap between experiments is the time to
take a lock. Elsewhere SkyPilot's own job queue starts it (a few seconds).

Polling. `poll` never blocks on SkyPilot: a background thread refreshes, per cluster with jobs in
flight, `sky.queue` (one call per cluster, jobs matched by their unique names) and fetches the
log of each finished job with `sky.tail_logs`; `poll` hands out what it found. A handle carries
the cluster, job name and exec request id, so handles from an earlier process are recognised.
A cluster that no longer exists (preempted, downed, its Slurm job cancelled) makes its jobs
`lost`; the engine requeues them.

`reconcile` adopts this workspace's clusters (by name prefix) and makes sure each has autostop.

Modules: backend.py (SkyPilotBackend: the shared state; composes the three below),
clusters.py (provision / teardown / reconcile), jobs.py (submit / poll / cancel), refresher.py
(the background thread: queue rounds, logs, outcomes); task.py (the task YAML, the job's run
command, resources and envs), staging.py (what is copied to a cluster), joblog.py (a finished
job's log), records.py (SkyPilot's status records read).
"""

from mcp_server.backends.skypilot.backend import DEFAULT_PREFIX, SkyPilotBackend
from mcp_server.backends.skypilot.clusters import ProvisionFailed
from mcp_server.backends.skypilot.joblog import SKY_JOB_LOG, TRAIN_LOG_BEGIN, TRAIN_LOG_END, parse_job_log
from mcp_server.backends.skypilot.records import ClusterInfo, accelerators_of, gpu_label
from mcp_server.backends.skypilot.staging import MAX_STAGE_BYTES, RUNNER_SOURCE, STAGE_SKIP
from mcp_server.backends.skypilot.task import RUNS_SUBDIR

_ClusterInfo = ClusterInfo   # its name before the split into a package

__all__ = [
    "DEFAULT_PREFIX", "MAX_STAGE_BYTES", "RUNNER_SOURCE", "RUNS_SUBDIR", "SKY_JOB_LOG", "STAGE_SKIP",
    "TRAIN_LOG_BEGIN", "TRAIN_LOG_END", "ClusterInfo", "ProvisionFailed", "SkyPilotBackend",
    "accelerators_of", "gpu_label", "parse_job_log",
]
