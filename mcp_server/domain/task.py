"""The task a workspace trains: which file the agent edits, which files are the fixed harness, the
metric and its direction, how data is prepared and how a run is started, and the budget per
profile. The one home of the task description (docs/task.md).

The description is `autoresearch.toml` at the workspace root:

    edit = "train.py"                       # the file the agent edits (only train.py for now)
    harness = ["prepare.py"]                # files whose sha256 every run checks (one or more)
    prepare = ["python", "prepare.py"]      # run once per slot/cluster before the first run ([] = none)
    run = ["python", "train.py"]            # one run; "python" is the slot's interpreter
    [metric]
    name = "val_bpb"
    direction = "lower"                     # or "higher"
    [budget]                                # training seconds per profile (optional)
    gpu = 300
    cpu = 15

Every key is optional; a workspace without the file runs the built-in template's task
(`DEFAULT_TASK`), exactly as before. Commands are argument lists, never shell text. Each
replicate's seed reaches the run as the environment variable AUTORESEARCH_SEED (a task that
ignores it still gets replicates: its noise floor then measures run-to-run variation).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mcp_server.domain.errors import InvalidInput
from mcp_server.domain.metric import Metric

TASK_FILE = "autoresearch.toml"
#: the environment variable that carries a replicate's seed to the run (runtime/runner.ENV_SEED)
SEED_ENV = "AUTORESEARCH_SEED"
#: the only edited file the engine supports today (snapshots, variants and code hashes read it)
SUPPORTED_EDIT = "train.py"
_METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_./-]{0,199}$")
MAX_HARNESS_FILES = 16
MAX_ARGV = 64
MAX_ARG_CHARS = 1000

Argv = Annotated[list[str], Field(min_length=1, max_length=MAX_ARGV)]


def _check_file(name: str, what: str) -> str:
    rel = PurePosixPath(name)
    if (not _FILE_NAME.fullmatch(name) or ".." in rel.parts or rel.parts[0] == ".git"
            or name.startswith(".autoresearch")):
        raise ValueError(f"{what} {name!r} must be a relative path inside the workspace "
                         "(letters, digits, . _ - /; no '..', not in .git or .autoresearch)")
    return str(rel)


class TaskMetric(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "val_bpb"
    direction: str = "lower"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _METRIC_NAME.fullmatch(v):
            raise ValueError(f"metric name {v!r} must be an identifier such as 'val_bpb' or 'val_accuracy' "
                             "(the key the run prints)")
        return v

    @field_validator("direction")
    @classmethod
    def _direction(cls, v: str) -> str:
        if v not in ("lower", "higher"):
            raise ValueError(f"metric direction must be 'lower' or 'higher' (which is better), got {v!r}")
        return v


class Task(BaseModel):
    """A task description (see the module doc). Frozen; `DEFAULT_TASK` is the template's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    edit: str = SUPPORTED_EDIT
    harness: list[str] = Field(default_factory=lambda: ["prepare.py"], min_length=1, max_length=MAX_HARNESS_FILES)
    metric_spec: TaskMetric = Field(default_factory=TaskMetric, alias="metric")
    prepare: list[str] | None = Field(default_factory=lambda: ["python", "prepare.py"], max_length=MAX_ARGV)
    run: Argv = Field(default_factory=lambda: ["python", "train.py"])
    budget: dict[str, float] | None = None
    source: str | None = Field(None, description="Where it was read from (None: the built-in default).")

    @field_validator("edit")
    @classmethod
    def _edit(cls, v: str) -> str:
        v = _check_file(v, "edit")
        if v != SUPPORTED_EDIT:
            raise ValueError(f"edit = {v!r}: only {SUPPORTED_EDIT!r} can be the edited file for now; "
                             f"rename the file to {SUPPORTED_EDIT} (and point run at it)")
        return v

    @field_validator("harness")
    @classmethod
    def _harness(cls, v: list[str]) -> list[str]:
        out = [_check_file(n, "harness file") for n in v]
        if SUPPORTED_EDIT in out:
            raise ValueError(f"{SUPPORTED_EDIT} is the edited file; it cannot also be a harness file")
        if len(set(out)) != len(out):
            raise ValueError(f"harness lists a file twice: {out}")
        return out

    @field_validator("prepare", "run")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is None or v == []:
            return None      # `prepare = []`: the task needs no preparation
        bad = [a for a in v if not isinstance(a, str) or not a or len(a) > MAX_ARG_CHARS or "\0" in a]
        if bad:
            raise ValueError(f"command arguments must be non-empty strings of at most {MAX_ARG_CHARS} characters; "
                             f"bad: {bad[:3]!r}")
        return v

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        bad = {k: s for k, s in v.items() if not (0 < s <= 86400)}
        if bad or not v:
            raise ValueError(f"budget maps a profile (e.g. 'gpu', 'cpu') to training seconds in (0, 86400]; "
                             f"bad: {bad or v!r}")
        return {str(k): float(s) for k, s in v.items()}

    @property
    def metric(self) -> Metric:
        return Metric(name=self.metric_spec.name, direction=self.metric_spec.direction)  # type: ignore[arg-type]

    @property
    def is_default(self) -> bool:
        return self.source is None

    def to_toml(self) -> str:
        """The description as autoresearch.toml text (what `autoresearch-fleet init` writes)."""
        def arr(xs: list[str]) -> str:
            return "[" + ", ".join(_q(x) for x in xs) + "]"
        lines = [
            "# The task autoresearch-fleet runs (docs/task.md). Commands are argument lists (no shell);",
            '# "python" is the slot\'s interpreter. Each replicate gets its seed in AUTORESEARCH_SEED.',
            f"edit = {_q(self.edit)}",
            f"harness = {arr(self.harness)}",
        ]
        lines.append(f"prepare = {arr(self.prepare or [])}" + ("" if self.prepare else "   # none"))
        lines += [f"run = {arr(self.run)}", "", "[metric]", f"name = {_q(self.metric_spec.name)}",
                  f"direction = {_q(self.metric_spec.direction)}"]
        if self.budget:
            lines += ["", "[budget]"] + [f"{k} = {v:g}" for k, v in sorted(self.budget.items())]
        return "\n".join(lines) + "\n"


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


DEFAULT_TASK = Task()


def parse_task(text: str, source: str = TASK_FILE) -> Task:
    """A task from autoresearch.toml text; InvalidInput naming the problem when it is not one."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{source} is not valid TOML ({e}); fix it (docs/task.md shows the keys).") from None
    if "source" in data:
        raise InvalidInput(f"{source}: unknown key 'source'.")
    try:
        return Task.model_validate({**data, "source": source})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}" for err in e.errors())
        raise InvalidInput(f"{source} is not a valid task description: {problems}. "
                           "Keys: edit, harness, prepare, run, [metric] name/direction, [budget] "
                           "(docs/task.md).") from None


def load_task(workspace: Path) -> Task:
    """The workspace's task: its autoresearch.toml, else the built-in default."""
    path = Path(workspace) / TASK_FILE
    if not path.is_file():
        return DEFAULT_TASK
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read {path}: {e}") from None
    return parse_task(text, str(path))


__all__ = ["DEFAULT_TASK", "SEED_ENV", "TASK_FILE", "Task", "TaskMetric", "load_task", "parse_task"]
