"""A finished SkyPilot job's log, as `sky.tail_logs` gives it: cleaned up, the train log cut out
from between the run command's markers, and the runner's result line read from outside them."""

from __future__ import annotations

import re
from typing import Any

from mcp_server.runtime import run_log

TRAIN_LOG_BEGIN = "ARF_TRAIN_LOG_BEGIN"
TRAIN_LOG_END = "ARF_TRAIN_LOG_END"
SKY_JOB_LOG = "sky_job.log"            # the whole SkyPilot job log, next to run.log

ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_SKY_PREFIX_RE = re.compile(r"^\([^()]*, pid=\d+\) ?")


def _strip_sky_line(line: str) -> str:
    return _SKY_PREFIX_RE.sub("", ANSI_RE.sub("", line), count=1)


def parse_job_log(text: str) -> tuple[str, str, dict[str, Any] | None]:
    """(clean job log, train log, runner result or None) from a SkyPilot job log.

    SkyPilot prefixes each line of the job's output with `(task-name, pid=N) ` and colours it;
    both are removed. The train log is what the run command printed between the markers."""
    clean_lines = [_strip_sky_line(line.rstrip("\r")) for line in text.splitlines()]
    clean = "\n".join(clean_lines) + ("\n" if clean_lines else "")
    train: list[str] | None = None
    collected: list[str] = []
    outside: list[str] = []      # the result line is looked for here only: train.py cannot forge it
    for line in clean_lines:
        if train is None and line.strip() == TRAIN_LOG_BEGIN:
            train = []
            continue
        if train is not None and line.strip() == TRAIN_LOG_END:
            collected, train = train, None
            continue
        (train if train is not None else outside).append(line)
    if train is not None:        # cut off: keep what there is
        collected = train
    while collected and collected[-1] == "":
        collected.pop()
    train_log = "\n".join(collected) + ("\n" if collected else "")
    return clean, train_log, run_log.parse_runner_output("\n".join(outside))
