"""Identifiers: their patterns and formats, in one place.

The tool schemas (`pattern=`), the engine's checks, the ledger's row mapping and the workspace
all use these. An experiment id is `e` + a zero-padded sequence number (`e0042`, at least four
digits, more once there are more than 9,999); a wave id is `w` + the same.
"""

from __future__ import annotations

import re

#: the regex sources, for JSON schemas (`Field(pattern=...)`) and for `re`
EXPERIMENT_ID = r"^e\d{4,9}$"
WAVE_ID = r"^w\d{4,9}$"
#: a base for a launch: an experiment id, or an abbreviated or full git commit sha
BASE_REF = r"^(e\d{4,9}|[0-9a-fA-F]{7,40})$"
#: a GPU type / tier label as the fleet reports it ('H100', 'A10G', 'CPU', ...)
GPU_TYPE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
#: a cluster (slot) name; SkyPilot's own limit is 63 characters
CLUSTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
#: a session tag: the branch is autoresearch/<tag>
TAG = r"^[A-Za-z0-9._-]{1,40}$"

ID_MAX_CHARS = 10        # 'e' + up to 9 digits
GPU_TYPE_MAX_CHARS = 32
CLUSTER_NAME_MAX_CHARS = 63
BASE_REF_MAX_CHARS = 40

EXPERIMENT_ID_RE = re.compile(EXPERIMENT_ID)
WAVE_ID_RE = re.compile(WAVE_ID)
TAG_RE = re.compile(TAG)


def format_exp_id(n: int) -> str:
    return f"e{n:04d}"


def format_wave_id(n: int) -> str:
    return f"w{n:04d}"


def id_seq(some_id: str) -> int:
    """The sequence number of an experiment or wave id ('e0042' -> 42)."""
    return int(some_id[1:])

