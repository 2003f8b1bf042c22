"""The SkyPilot backend (backend.py); this package re-exports what other code imports."""

from .backend import (DEFAULT_PREFIX, MAX_STAGE_BYTES, RUNNER_SOURCE, RUNS_SUBDIR, SKY_JOB_LOG, STAGE_SKIP,
                      TRAIN_LOG_BEGIN, TRAIN_LOG_END, ProvisionFailed, SkyPilotBackend, _ClusterInfo,
                      accelerators_of, gpu_label, parse_job_log)

__all__ = [
    "DEFAULT_PREFIX", "MAX_STAGE_BYTES", "RUNNER_SOURCE", "RUNS_SUBDIR", "SKY_JOB_LOG", "STAGE_SKIP",
    "TRAIN_LOG_BEGIN", "TRAIN_LOG_END", "ProvisionFailed", "SkyPilotBackend", "accelerators_of", "gpu_label",
    "parse_job_log", "_ClusterInfo",
]
